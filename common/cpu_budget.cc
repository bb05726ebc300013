#include "common/cpu_budget.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace pnn {
namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// "/a/b" -> {"/a/b", "/a", ""}: a limit set on any ancestor applies too
// (Kubernetes sets it on the container's cgroup, systemd on a slice).
std::vector<std::string> SelfAndAncestors(absl::string_view path) {
  std::vector<std::string> paths;
  std::string current(absl::StripSuffix(path, "/"));
  while (true) {
    paths.push_back(current);
    if (current.empty()) break;
    const size_t slash = current.rfind('/');
    current.resize(slash == std::string::npos ? 0 : slash);
  }
  return paths;
}

// cgroup v2 `cpu.max`: "max 100000" or "QUOTA PERIOD".
std::optional<double> QuotaV2(const std::string& dir) {
  std::optional<std::string> text = ReadFile(dir + "/cpu.max");
  if (!text) return std::nullopt;
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(*text), ' ', absl::SkipEmpty());
  double quota = 0, period = 0;
  if (fields.size() != 2 || !absl::SimpleAtod(fields[0], &quota) ||
      !absl::SimpleAtod(fields[1], &period) || quota <= 0 || period <= 0) {
    return std::nullopt;  // "max", or unreadable
  }
  return quota / period;
}

// cgroup v1: cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us.
std::optional<double> QuotaV1(const std::string& dir) {
  std::optional<std::string> quota_text = ReadFile(dir + "/cpu.cfs_quota_us");
  std::optional<std::string> period_text = ReadFile(dir + "/cpu.cfs_period_us");
  double quota = 0, period = 0;
  if (!quota_text || !period_text ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(*quota_text), &quota) ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(*period_text), &period) ||
      quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return quota / period;
}

void KeepSmaller(std::optional<double> candidate,
                 std::optional<double>& smallest) {
  if (candidate && (!smallest || *candidate < *smallest)) {
    smallest = candidate;
  }
}

int AffinityCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

std::optional<double> CgroupCpuQuota(const std::string& cgroup_root,
                                     const std::string& proc_self_cgroup) {
  std::optional<double> smallest;
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n')) {
    // hierarchy-ID:controller-list:path
    std::vector<absl::string_view> parts = absl::StrSplit(line, ':');
    if (parts.size() != 3) continue;
    const absl::string_view controllers = parts[1];
    const absl::string_view path = parts[2];
    if (parts[0] == "0" && controllers.empty()) {  // the v2 hierarchy
      for (const std::string& dir : SelfAndAncestors(path)) {
        KeepSmaller(QuotaV2(cgroup_root + dir), smallest);
      }
      continue;
    }
    std::vector<absl::string_view> names = absl::StrSplit(controllers, ',');
    if (std::find(names.begin(), names.end(), "cpu") == names.end()) continue;
    // The v1 cpu controller is mounted as cpu,cpuacct (with a cpu symlink
    // on most distributions) or as cpu alone.
    for (const std::string& mount :
         {std::string(controllers), std::string("cpu")}) {
      for (const std::string& dir : SelfAndAncestors(path)) {
        KeepSmaller(QuotaV1(cgroup_root + "/" + mount + dir), smallest);
      }
    }
  }
  return smallest;
}

int AvailableCpus() {
  int cpus = AffinityCpus();
  std::optional<std::string> self = ReadFile("/proc/self/cgroup");
  if (self) {
    if (std::optional<double> quota = CgroupCpuQuota("/sys/fs/cgroup", *self)) {
      cpus = std::min(cpus, std::max(1, static_cast<int>(std::ceil(*quota))));
    }
  }
  return cpus;
}

int ResolveThreadCount(int requested) {
  return requested > 0 ? requested : AvailableCpus();
}

}  // namespace pnn
