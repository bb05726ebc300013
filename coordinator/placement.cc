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

std::pair<int, int> WorkerSpeed(const WorkerRegistry::Worker& worker) {
  const bool cuda = worker.info.device().rfind("cuda", 0) == 0;
  return {cuda ? 1 : 0, worker.info.threads()};
}

namespace {

// Reassigns `workers` (positions in `available`) to `works` so that the
// heaviest work gets the fastest worker: returns, for each work in order,
// its worker. Stable: equal works keep the order of equal workers.
std::vector<size_t> FastestForHeaviest(
    const std::vector<int64_t>& works, std::vector<size_t> workers,
    const std::vector<WorkerRegistry::Worker>& available) {
  std::vector<size_t> by_work(works.size());
  for (size_t i = 0; i < by_work.size(); ++i) by_work[i] = i;
  std::stable_sort(by_work.begin(), by_work.end(),
                   [&](size_t a, size_t b) { return works[a] > works[b]; });
  std::stable_sort(workers.begin(), workers.end(), [&](size_t a, size_t b) {
    return WorkerSpeed(available[a]) > WorkerSpeed(available[b]);
  });
  std::vector<size_t> assigned(works.size());
  for (size_t rank = 0; rank < by_work.size(); ++rank) {
    assigned[by_work[rank]] = workers[rank];
  }
  return assigned;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> PlaceTasks(
    const std::vector<QueuedTask>& queued,
    const std::vector<WorkerRegistry::Worker>& available) {
  // Which tasks start now, and on which workers: first come, first served.
  std::vector<std::pair<size_t, size_t>> chosen;  // (queued position, worker)
  std::vector<bool> taken(available.size(), false);
  for (size_t q = 0; q < queued.size(); ++q) {
    for (size_t w = 0; w < available.size(); ++w) {
      if (!taken[w] &&
          DeviceMatches(queued[q].device, available[w].info.device())) {
        taken[w] = true;
        chosen.emplace_back(q, w);
        break;
      }
    }
  }
  // Then, per device offered (any of its tasks fits any of its workers),
  // the heaviest task on the fastest worker.
  std::map<std::string, std::vector<size_t>> by_device;  // chosen positions
  for (size_t c = 0; c < chosen.size(); ++c) {
    by_device[available[chosen[c].second].info.device()].push_back(c);
  }
  std::vector<std::pair<size_t, size_t>> placements(chosen.size());
  for (const auto& [device, members] : by_device) {
    std::vector<int64_t> works;
    std::vector<size_t> workers;
    for (size_t c : members) {
      works.push_back(queued[chosen[c].first].work);
      workers.push_back(chosen[c].second);
    }
    const std::vector<size_t> assigned =
        FastestForHeaviest(works, workers, available);
    for (size_t i = 0; i < members.size(); ++i) {
      placements[members[i]] = {queued[chosen[members[i]].first].index,
                                assigned[i]};
    }
  }
  return placements;
}

PipelinePlacement PlacePipeline(
    const std::string& device, size_t stages,
    const std::vector<WorkerRegistry::Worker>& available,
    size_t matching_registered, absl::Time heard_since,
    const std::vector<int64_t>& stage_work) {
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
  } else if (stage_work.size() == stages) {
    placement.workers =
        FastestForHeaviest(stage_work, placement.workers, available);
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
                        "workers at once (a pipeline: one per stage); ",
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
