// The process_* metrics and pnn_build_info that both services serve
// (rpc/metrics.h), read from this test process's /proc/self.
#include <fcntl.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <sys/resource.h>
#include <unistd.h>

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/metrics.h"

namespace pnn {
namespace {

std::map<std::string, prometheus::MetricFamily> Collect() {
  std::map<std::string, prometheus::MetricFamily> by_name;
  for (auto& family : MakeProcessCollector()->Collect()) {
    by_name[family.name] = family;
  }
  return by_name;
}

TEST(ProcessMetricsTest, MaxOpenFilesIsTheSoftLimit) {
  const std::string limits =
      "Limit                     Soft Limit           Hard Limit           "
      "Units     \n"
      "Max processes             514271               514271               "
      "processes \n"
      "Max open files            1024                 1048576              "
      "files     \n";
  EXPECT_EQ(MaxOpenFiles(limits), 1024);
  EXPECT_EQ(MaxOpenFiles("Max open files  unlimited  unlimited  files\n"), -1);
  EXPECT_EQ(MaxOpenFiles("Max processes 10 10 processes\n"), -1);
  EXPECT_EQ(MaxOpenFiles(""), -1);
}

TEST(ProcessMetricsTest, FileDescriptorsAreThoseOfThisProcess) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  auto before = Collect();
  ASSERT_TRUE(before.count("process_max_fds"));
  EXPECT_EQ(before["process_max_fds"].type, prometheus::MetricType::Gauge);
  EXPECT_EQ(before["process_max_fds"].metric.at(0).gauge.value,
            static_cast<double>(limit.rlim_cur));

  const int fd = open("/proc/self/stat", O_RDONLY);
  ASSERT_GE(fd, 0);
  auto after = Collect();
  close(fd);
  EXPECT_EQ(after["process_open_fds"].metric.at(0).gauge.value,
            before["process_open_fds"].metric.at(0).gauge.value + 1);
  EXPECT_GT(after["process_resident_memory_bytes"].metric.at(0).gauge.value, 0);
  EXPECT_EQ(after["process_cpu_seconds_total"].type,
            prometheus::MetricType::Counter);
}

TEST(ProcessMetricsTest, BuildInfoNamesVersionAndRevision) {
  auto families = Collect();
  ASSERT_TRUE(families.count("pnn_build_info"));
  const auto& metric = families["pnn_build_info"].metric.at(0);
  EXPECT_EQ(metric.gauge.value, 1);
  std::map<std::string, std::string> labels;
  for (const auto& label : metric.label) labels[label.name] = label.value;
  EXPECT_EQ(labels["version"], PNN_TEST_VERSION);
  EXPECT_EQ(labels["version"], BuildVersion());
  EXPECT_FALSE(labels["revision"].empty());
  EXPECT_EQ(labels["revision"], BuildRevision());
}

}  // namespace
}  // namespace pnn
