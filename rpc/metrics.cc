#include "rpc/metrics.h"

#include <dirent.h>
#include <dlfcn.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

// Debian's civetweb creates its threads with a fixed 100 KiB stack, and
// glibc carves the static TLS of every loaded library out of each thread's
// stack. Next to libtorch, OpenBLAS and glog nothing is left, so
// pthread_create fails with EINVAL and the Exposer throws "null context
// when constructing CivetServer" (see NOTES.md). This definition, linked
// into every binary that serves metrics, interposes the libc function and
// raises small requests to 1 MiB; larger requests pass through unchanged.
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attributes,
                                         size_t stack_size) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const auto real = reinterpret_cast<SetStackSize>(
      dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kMinimumStack = size_t{1} << 20;
  if (real == nullptr) return EINVAL;
  return real(attributes,
              stack_size < kMinimumStack ? kMinimumStack : stack_size);
}

namespace pnn {
namespace {

prometheus::MetricFamily Gauge(
    const std::string& name, const std::string& help, double value,
    prometheus::MetricType type = prometheus::MetricType::Gauge) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(metric);
  return family;
}

// The process_* metrics of the Prometheus client conventions, from /proc.
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> families;
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    std::ifstream stat_file("/proc/self/stat");
    std::string stat((std::istreambuf_iterator<char>(stat_file)),
                     std::istreambuf_iterator<char>());
    // Fields after the parenthesised command name (which may hold spaces).
    const size_t close = stat.rfind(')');
    if (close != std::string::npos) {
      std::istringstream fields(stat.substr(close + 2));
      std::vector<std::string> values;
      std::string value;
      while (fields >> value) values.push_back(value);
      // Field numbers from proc(5), minus 3 for pid, comm and the offset.
      if (values.size() > 21) {
        const double user = std::stod(values[11]);
        const double system = std::stod(values[12]);
        const double start_ticks = std::stod(values[19]);
        const double virtual_bytes = std::stod(values[20]);
        const double rss_pages = std::stod(values[21]);
        families.push_back(Gauge("process_cpu_seconds_total",
                                 "User and system CPU time spent in seconds.",
                                 (user + system) / ticks,
                                 prometheus::MetricType::Counter));
        families.push_back(Gauge("process_virtual_memory_bytes",
                                 "Virtual memory size in bytes.",
                                 virtual_bytes));
        families.push_back(Gauge("process_resident_memory_bytes",
                                 "Resident memory size in bytes.",
                                 rss_pages * page));
        families.push_back(Gauge("process_start_time_seconds",
                                 "Start time of the process since unix epoch "
                                 "in seconds.",
                                 BootTime() + start_ticks / ticks));
      }
    }
    int open_files = 0;
    if (DIR* fds = opendir("/proc/self/fd")) {
      while (readdir(fds) != nullptr) ++open_files;
      closedir(fds);
      open_files -= 3;  // ".", ".." and the directory itself
    }
    families.push_back(Gauge("process_open_fds",
                             "Number of open file descriptors.", open_files));
    return families;
  }

 private:
  static double BootTime() {
    std::ifstream stat("/proc/stat");
    std::string key;
    while (stat >> key) {
      if (key == "btime") {
        double seconds = 0;
        stat >> seconds;
        return seconds;
      }
    }
    return 0;
  }
};

}  // namespace

prometheus::Counter& AddCounter(prometheus::Registry& registry,
                                const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter()
      .Name(name)
      .Help(help)
      .Register(registry)
      .Add({});
}

prometheus::Gauge& AddGauge(prometheus::Registry& registry,
                            const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(
      {});
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port,
    std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(
        absl::StrCat(host, ":", port), /*num_threads=*/2);
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host,
                                               ":", port, ": ", error.what()));
  }
  server->registry_ = std::move(registry);
  server->process_ = std::make_shared<ProcessCollector>();
  server->exposer_->RegisterCollectable(server->registry_);
  server->exposer_->RegisterCollectable(server->process_);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  server->port_ = ports.empty() ? port : ports.front();
  return server;
}

MetricsServer::~MetricsServer() = default;

}  // namespace pnn
