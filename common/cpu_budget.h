// How many CPUs this process may really use, for default thread counts.
//
// std::thread::hardware_concurrency() counts the host's cores, not the
// container's: a worker started by `docker run --cpus=1` or a Kubernetes pod
// with `limits.cpu: 1` on a 64-core node would start 64 OpenMP threads and
// thrash on one core's quota. AvailableCpus() is the smaller of the
// scheduler affinity mask (cpusets, `taskset`, `--cpuset-cpus`) and the CFS
// quota of the process's cgroup (v1 `cpu.cfs_quota_us / cpu.cfs_period_us`,
// v2 `cpu.max`), rounded up, at least 1; the same rule as Go's runtime and
// the JVM's container support.
//
// Free of libtorch; thread-safe (reads files, keeps no state).
#ifndef PNN_COMMON_CPU_BUDGET_H_
#define PNN_COMMON_CPU_BUDGET_H_

#include <optional>
#include <string>

namespace pnn {

// The CPUs this process may use (see above); >= 1.
int AvailableCpus();

// The cgroup CPU quota in CPUs (quota / period, not rounded), or nullopt when
// there is none ("max", -1, or no readable cgroup files). `cgroup_root` is
// the cgroup file system's mount point (/sys/fs/cgroup) and
// `proc_self_cgroup` the text of /proc/self/cgroup; both are parameters so
// that tests can give a fake hierarchy. The process's own cgroup directory
// is tried first, then the mount's root (inside a container the mount shows
// the container's cgroup at the root).
std::optional<double> CgroupCpuQuota(const std::string& cgroup_root,
                                     const std::string& proc_self_cgroup);

// `requested` when positive, otherwise AvailableCpus(): how the services
// and pnn-train resolve `--threads=0`.
int ResolveThreadCount(int requested);

}  // namespace pnn

#endif  // PNN_COMMON_CPU_BUDGET_H_
