#include "coordinator/placement.h"

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

}  // namespace pnn
