// The CPU budget that default thread counts follow: cgroup v1 and v2 quota
// files in a fake hierarchy, the process's own cgroup before the mount's
// root, limits on ancestors, and "no limit" spelled every way the kernel
// spells it.
#include "common/cpu_budget.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

namespace fs = std::filesystem;

class CgroupTree {
 public:
  CgroupTree()
      : root_(fs::temp_directory_path() /
              ("pnn-cpu-budget-" + std::to_string(getpid()) + "-" +
               std::to_string(counter_++))) {
    fs::create_directories(root_);
  }
  ~CgroupTree() { fs::remove_all(root_); }

  void Write(const std::string& relative, const std::string& text) {
    fs::path path = root_ / relative;
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }
  std::string root() const { return root_.string(); }

 private:
  static inline int counter_ = 0;
  fs::path root_;
};

TEST(CgroupCpuQuotaTest, V2QuotaOfTheProcessCgroup) {
  CgroupTree tree;
  tree.Write("cpu.max", "max 100000\n");
  tree.Write("kubepods/pod1/ctr/cpu.max", "150000 100000\n");
  EXPECT_THAT(CgroupCpuQuota(tree.root(), "0::/kubepods/pod1/ctr\n"),
              testing::Optional(1.5));
}

TEST(CgroupCpuQuotaTest, V2LimitOnAnAncestorApplies) {
  CgroupTree tree;
  tree.Write("slice/cpu.max", "200000 100000\n");
  tree.Write("slice/leaf/cpu.max", "max 100000\n");
  EXPECT_THAT(CgroupCpuQuota(tree.root(), "0::/slice/leaf\n"),
              testing::Optional(2.0));
}

TEST(CgroupCpuQuotaTest, V2InsideAContainerNamespaceReadsTheRoot) {
  CgroupTree tree;  // cgroupns: the container's cgroup is the mount's root
  tree.Write("cpu.max", "50000 100000\n");
  EXPECT_THAT(CgroupCpuQuota(tree.root(), "0::/\n"), testing::Optional(0.5));
}

TEST(CgroupCpuQuotaTest, V1DockerContainerWithoutNamespace) {
  // Docker on cgroups v1 mounts the container's own cgroup at
  // /sys/fs/cgroup/cpu,cpuacct while /proc/self/cgroup names the host path.
  CgroupTree tree;
  tree.Write("cpu,cpuacct/cpu.cfs_quota_us", "100000\n");
  tree.Write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_THAT(CgroupCpuQuota(tree.root(),
                             "12:memory:/docker/abc\n"
                             "4:cpu,cpuacct:/docker/abc\n"
                             "1:name=systemd:/docker/abc\n"),
              testing::Optional(1.0));
}

TEST(CgroupCpuQuotaTest, V1SeparateCpuMountAndHostPath) {
  CgroupTree tree;
  tree.Write("cpu/user.slice/cpu.cfs_quota_us", "300000\n");
  tree.Write("cpu/user.slice/cpu.cfs_period_us", "100000\n");
  tree.Write("cpu/user.slice/job/cpu.cfs_quota_us", "-1\n");
  tree.Write("cpu/user.slice/job/cpu.cfs_period_us", "100000\n");
  EXPECT_THAT(CgroupCpuQuota(tree.root(), "3:cpu:/user.slice/job\n"),
              testing::Optional(3.0));
}

TEST(CgroupCpuQuotaTest, NoLimitInAnySpelling) {
  CgroupTree tree;
  tree.Write("cpu.max", "max 100000\n");
  tree.Write("cpu/cpu.cfs_quota_us", "-1\n");
  tree.Write("cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuQuota(tree.root(), "0::/\n"), std::nullopt);
  EXPECT_EQ(CgroupCpuQuota(tree.root(), "5:cpu:/\n"), std::nullopt);
  EXPECT_EQ(CgroupCpuQuota(tree.root(), "5:memory:/\n"), std::nullopt);
  EXPECT_EQ(CgroupCpuQuota(tree.root() + "/missing", "0::/\n"), std::nullopt);
  EXPECT_EQ(CgroupCpuQuota(tree.root(), "garbage"), std::nullopt);
}

TEST(CgroupCpuQuotaTest, MalformedFilesAreNoLimitNotACrash) {
  CgroupTree tree;
  tree.Write("cpu.max", "lots\n");
  tree.Write("a/cpu.max", "100000 0\n");
  EXPECT_EQ(CgroupCpuQuota(tree.root(), "0::/a\n"), std::nullopt);
}

TEST(AvailableCpusTest, AtLeastOneAndAtMostTheAffinityMask) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cpus = AvailableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, CPU_COUNT(&set));
}

TEST(ResolveThreadCountTest, ExplicitCountWinsZeroMeansAvailable) {
  EXPECT_EQ(ResolveThreadCount(3), 3);
  EXPECT_EQ(ResolveThreadCount(0), AvailableCpus());
}

}  // namespace
}  // namespace pnn
