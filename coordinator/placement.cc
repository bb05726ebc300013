#include "coordinator/placement.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pnn {

bool DeviceMatches(const std::string& wanted, const std::string& offered) {
  const bool wants_cuda = wanted.rfind("cuda", 0) == 0;
  const bool offers_cuda = offered.rfind("cuda", 0) == 0;
  if (!wants_cuda) return !offers_cuda;
  return wanted == "cuda" ? offers_cuda : wanted == offered;
}

std::vector<std::pair<size_t, size_t>> PlaceTasks(
    const std::vector<QueuedTask>& queued,
    const std::vector<WorkerRegistry::Worker>& available) {
  std::vector<std::pair<size_t, size_t>> placements;
  std::vector<bool> taken(available.size(), false);
  for (const QueuedTask& task : queued) {
    for (size_t w = 0; w < available.size(); ++w) {
      if (!taken[w] && DeviceMatches(task.device, available[w].info.device())) {
        taken[w] = true;
        placements.emplace_back(task.index, w);
        break;
      }
    }
  }
  return placements;
}

PipelinePlacement PlacePipeline(
    const std::string& device, size_t stages,
    const std::vector<WorkerRegistry::Worker>& available,
    size_t matching_registered, absl::Time heard_since) {
  PipelinePlacement placement;
  for (size_t w = 0; w < available.size() && placement.workers.size() < stages;
       ++w) {
    if (DeviceMatches(device, available[w].info.device()) &&
        available[w].last_heartbeat >= heard_since) {
      placement.workers.push_back(w);
    }
  }
  if (placement.workers.size() < stages) {
    placement.workers.clear();
    placement.gang_waits = matching_registered >= stages;
  }
  return placement;
}

namespace {

size_t CountMatching(const std::string& device,
                     const std::vector<WorkerRegistry::Worker>& workers) {
  return static_cast<size_t>(
      std::count_if(workers.begin(), workers.end(), [&](const auto& worker) {
        return DeviceMatches(device, worker.info.device());
      }));
}

// "2 cpu, 1 cuda:0": the registered workers by device.
std::string DevicesOffered(const std::vector<WorkerRegistry::Worker>& workers) {
  std::map<std::string, int> by_device;
  for (const auto& worker : workers) ++by_device[worker.info.device()];
  std::vector<std::string> parts;
  for (const auto& [device, count] : by_device) {
    parts.push_back(absl::StrCat(count, " ", device));
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace

std::string WaitMessage(const std::string& device, size_t stages,
                        const std::vector<WorkerRegistry::Worker>& registered,
                        const std::vector<WorkerRegistry::Worker>& available) {
  if (registered.empty()) {
    return "waiting for a worker to register (none is registered)";
  }
  const std::string wanted = device.empty() ? "cpu" : device;
  const size_t matching = CountMatching(wanted, registered);
  const size_t idle = CountMatching(wanted, available);
  if (matching == 0) {
    return absl::StrCat("waiting for a worker with device \"", wanted,
                        "\": none of the ", registered.size(),
                        " registered offers it (",
                        DevicesOffered(registered), ")");
  }
  // Only a device other than the default is named, for CPU-only clusters'
  // messages to stay as they were.
  const std::string kind = wanted == "cpu" ? "" : absl::StrCat(wanted, " ");
  if (stages > 0) {
    return absl::StrCat("waiting for ", stages, " idle ", kind,
                        "workers at once (model-parallel: one per stage); ",
                        idle, " of ", matching, " registered are idle");
  }
  if (idle == 0) {
    return absl::StrCat("waiting for an idle ", kind, "worker (", matching,
                        " registered, all busy)");
  }
  return absl::StrCat("waiting for an idle ", kind, "worker (", matching,
                      " registered, ", idle, " idle)");
}

}  // namespace pnn
