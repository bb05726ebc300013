#include "rpc/metrics.h"

#include <CivetServer.h>
#include <civetweb.h>
#include <dirent.h>
#include <dlfcn.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

#ifndef PNN_VERSION
#define PNN_VERSION "unknown"
#endif
#ifndef PNN_REVISION
#define PNN_REVISION "unknown"
#endif

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
    AddStatFamilies(&families);
    AddFileFamilies(&families);
    families.push_back(BuildInfo());
    return families;
  }

 private:
  // CPU, memory and start time from /proc/self/stat.
  static void AddStatFamilies(std::vector<prometheus::MetricFamily>* out) {
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    const std::string stat = ReadFile("/proc/self/stat");
    // Fields after the parenthesised command name (which may hold spaces).
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) return;
    std::istringstream fields(stat.substr(close + 2));
    std::vector<std::string> values;
    std::string value;
    while (fields >> value) values.push_back(value);
    // Field numbers from proc(5), minus 3 for pid, comm and the offset.
    if (values.size() <= 21) return;
    const double user = std::stod(values[11]);
    const double system = std::stod(values[12]);
    const double start_ticks = std::stod(values[19]);
    const double virtual_bytes = std::stod(values[20]);
    const double rss_pages = std::stod(values[21]);
    out->push_back(Gauge("process_cpu_seconds_total",
                         "User and system CPU time spent in seconds.",
                         (user + system) / ticks,
                         prometheus::MetricType::Counter));
    out->push_back(Gauge("process_virtual_memory_bytes",
                         "Virtual memory size in bytes.", virtual_bytes));
    out->push_back(Gauge("process_resident_memory_bytes",
                         "Resident memory size in bytes.", rss_pages * page));
    out->push_back(Gauge("process_start_time_seconds",
                         "Start time of the process since unix epoch in "
                         "seconds.",
                         BootTime() + start_ticks / ticks));
  }

  // Open descriptors (/proc/self/fd) and their limit (/proc/self/limits).
  static void AddFileFamilies(std::vector<prometheus::MetricFamily>* out) {
    int open_files = 0;
    if (DIR* fds = opendir("/proc/self/fd")) {
      while (readdir(fds) != nullptr) ++open_files;
      closedir(fds);
      open_files -= 3;  // ".", ".." and the directory itself
    }
    out->push_back(Gauge("process_open_fds",
                         "Number of open file descriptors.", open_files));
    const double max_fds = MaxOpenFiles(ReadFile("/proc/self/limits"));
    if (max_fds >= 0) {
      out->push_back(Gauge("process_max_fds",
                           "Maximum number of open file descriptors.",
                           max_fds));
    }
  }

  static std::string ReadFile(const char* path) {
    std::ifstream file(path);
    return std::string((std::istreambuf_iterator<char>(file)),
                       std::istreambuf_iterator<char>());
  }

  static prometheus::MetricFamily BuildInfo() {
    prometheus::MetricFamily family =
        Gauge("pnn_build_info",
              "Always 1; the labels name the pnn version and git revision "
              "this binary was built from.",
              1);
    family.metric.front().label = {{"revision", BuildRevision()},
                                   {"version", BuildVersion()}};
    return family;
  }

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

// /metrics is answered here, before prometheus-cpp's handler, so that the
// page holds pnn's families only: the Exposer's handler would add its own
// exposer_request_latencies, a summary in microseconds that 1.0.1 can
// neither rename nor leave out. civetweb calls begin_request for every
// request; the server's port says which MetricsServer's collectables to
// serialize (tests run several servers in one process).
std::mutex& PagesMutex() {
  static std::mutex mutex;
  return mutex;
}
std::map<int, std::vector<std::shared_ptr<prometheus::Collectable>>>&
Pages() {
  static auto* pages =
      new std::map<int, std::vector<std::shared_ptr<prometheus::Collectable>>>;
  return *pages;
}

int ServeMetrics(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  if (request == nullptr || request->local_uri == nullptr ||
      std::strcmp(request->local_uri, "/metrics") != 0) {
    return 0;  // civetweb (and prometheus-cpp) handle everything else
  }
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables;
  {
    std::lock_guard<std::mutex> lock(PagesMutex());
    auto it = Pages().find(request->server_port);
    if (it == Pages().end()) return 0;
    collectables = it->second;
  }
  std::vector<prometheus::MetricFamily> families;
  for (const auto& collectable : collectables) {
    for (auto& family : collectable->Collect()) {
      families.push_back(std::move(family));
    }
  }
  const std::string body = prometheus::TextSerializer().Serialize(families);
  mg_printf(connection,
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: %zu\r\n\r\n",
            body.size());
  mg_write(connection, body.data(), body.size());
  return 200;
}

}  // namespace

const char* BuildVersion() { return PNN_VERSION; }
const char* BuildRevision() { return PNN_REVISION; }

double MaxOpenFiles(absl::string_view proc_limits) {
  for (absl::string_view line : absl::StrSplit(proc_limits, '\n')) {
    // "Max open files            1024                 1048576    files"
    if (!absl::ConsumePrefix(&line, "Max open files")) continue;
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    double soft = 0;
    if (!fields.empty() && absl::SimpleAtod(fields[0], &soft)) return soft;
    return -1;  // "unlimited"
  }
  return -1;
}

std::shared_ptr<prometheus::Collectable> MakeProcessCollector() {
  return std::make_shared<ProcessCollector>();
}

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
  static const CivetCallbacks callbacks = [] {
    CivetCallbacks value;  // zeroed by its constructor
    value.begin_request = ServeMetrics;
    return value;
  }();
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports",
                                 absl::StrCat(host, ":", port), "num_threads",
                                 "2"},
        &callbacks);
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host,
                                               ":", port, ": ", error.what()));
  }
  server->registry_ = std::move(registry);
  server->process_ = MakeProcessCollector();
  server->exposer_->RegisterCollectable(server->registry_);
  server->exposer_->RegisterCollectable(server->process_);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  server->port_ = ports.empty() ? port : ports.front();
  {
    std::lock_guard<std::mutex> lock(PagesMutex());
    Pages()[server->port_] = {server->registry_, server->process_};
  }
  return server;
}

MetricsServer::~MetricsServer() {
  {
    std::lock_guard<std::mutex> lock(PagesMutex());
    Pages().erase(port_);
  }
  exposer_.reset();  // stops civetweb's threads before the collectables go
}

}  // namespace pnn
