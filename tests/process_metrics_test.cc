// The process_* metrics and pnn_build_info that both services serve
// (rpc/metrics.h), read from this test process's /proc/self.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <prometheus/collectable.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/metrics.h"
#include "tests/http_get.h"

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

TEST(ProcessMetricsTest, EachServerServesItsOwnRegistryAndNoExposerFamilies) {
  auto first_registry = std::make_shared<prometheus::Registry>();
  auto second_registry = std::make_shared<prometheus::Registry>();
  AddGauge(*first_registry, "pnn_test_first", "The first server's.").Set(1);
  AddGauge(*second_registry, "pnn_test_second", "The second server's.").Set(2);
  auto first = MetricsServer::Start("127.0.0.1", 0, first_registry);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = MetricsServer::Start("127.0.0.1", 0, second_registry);
  ASSERT_TRUE(second.ok()) << second.status();

  const std::string page = HttpGet((*first)->port(), "/metrics");
  EXPECT_THAT(page, ::testing::StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(page, ::testing::HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(page, ::testing::HasSubstr("\npnn_test_first 1"));
  EXPECT_THAT(page, ::testing::HasSubstr("\nprocess_open_fds "));
  EXPECT_THAT(page, ::testing::HasSubstr("\npnn_build_info{"));
  EXPECT_THAT(page, ::testing::Not(::testing::HasSubstr("pnn_test_second")));
  EXPECT_THAT(page, ::testing::Not(::testing::HasSubstr("exposer_")));
  EXPECT_THAT(HttpGet((*second)->port(), "/metrics"),
              ::testing::HasSubstr("\npnn_test_second 2"));
  EXPECT_THAT(HttpGet((*first)->port(), "/other"),
              ::testing::StartsWith("HTTP/1.1 404"));
}

}  // namespace
}  // namespace pnn
