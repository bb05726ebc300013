// Prometheus exposition shared by pnn's services: one registry per
// process, a pull endpoint (/metrics) on prometheus-cpp's Exposer whose
// page holds that registry and the process collector only (no exposer_*
// families of prometheus-cpp's own),
// the standard process_* metrics (CPU, memory, start time, open and maximum
// file descriptors) and pnn_build_info{version,revision}.
//
// Thread safety: metrics objects from prometheus-cpp are thread-safe; the
// server is started once from main() and lives until the process exits or
// the object is destroyed.
#ifndef PNN_RPC_METRICS_H_
#define PNN_RPC_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prometheus {
class Collectable;
class Counter;
class Exposer;
class Gauge;
class Registry;
}  // namespace prometheus

namespace pnn {

// A label-less counter or gauge in its own family: the common case of the
// services' metrics. The registry owns it.
prometheus::Counter& AddCounter(prometheus::Registry& registry,
                                const std::string& name,
                                const std::string& help);
prometheus::Gauge& AddGauge(prometheus::Registry& registry,
                            const std::string& name, const std::string& help);

// pnn's version (CMake's project version) and git revision at configure
// time ("unknown" when built outside a git checkout).
const char* BuildVersion();
const char* BuildRevision();

// The soft "Max open files" limit in the text of /proc/<pid>/limits; -1
// when the line is missing or the limit is "unlimited".
double MaxOpenFiles(absl::string_view proc_limits);

// Collects, at every scrape, the process_* metrics of this process (from
// /proc/self) and pnn_build_info (gauge 1 with version and revision labels).
std::shared_ptr<prometheus::Collectable> MakeProcessCollector();

class MetricsServer {
 public:
  // Serves `registry` plus the process metrics on host:port (port 0: pick
  // a free one). UNAVAILABLE when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host, int port,
      std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();

  int port() const { return port_; }

 private:
  MetricsServer() = default;
  // The exposer holds collectables by weak_ptr: keep them alive here.
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> process_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace pnn

#endif  // PNN_RPC_METRICS_H_
