// Where queued work goes: pure functions of the queued tasks and the
// workers that may take them (WorkerRegistry::Available), tested without
// gRPC (tests/placement_test.cc). The coordinator claims what they choose.
#ifndef PNN_COORDINATOR_PLACEMENT_H_
#define PNN_COORDINATOR_PLACEMENT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "coordinator/worker_registry.h"

namespace pnn {

// Whether a worker offering `offered` can run a task asking for `wanted`:
// "cpu" only on CPU workers, "cuda" on any CUDA worker, "cuda:N" only there.
bool DeviceMatches(const std::string& wanted, const std::string& offered);

// A queued task: its position in the job, the device it asks for and how
// much work it is (any unit, the same for a job's tasks: predicted
// training FLOPs, TaskWork).
struct QueuedTask {
  size_t index = 0;
  std::string device;
  int64_t work = 0;
};

// How fast a worker is taken to be, for matching work to workers: a CUDA
// worker before a CPU one, then more threads before fewer. Greater is
// faster.
std::pair<int, int> WorkerSpeed(const WorkerRegistry::Worker& worker);

// Each queued task (in order) on the first available worker whose device
// matches, each worker at most once: (task index, position in `available`).
// Among the workers so chosen that offer the same device, the heaviest
// task goes to the fastest worker (WorkerSpeed; ties keep their order), so
// that a heterogeneous pool finishes a job's segments together sooner.
std::vector<std::pair<size_t, size_t>> PlaceTasks(
    const std::vector<QueuedTask>& queued,
    const std::vector<WorkerRegistry::Worker>& available);

// A model-parallel run's stages start together on as many workers, or not
// at all.
struct PipelinePlacement {
  // Positions in `available`, one per stage in order; empty: not now.
  std::vector<size_t> workers;
  // Not now, and enough matching workers are registered for it ever to
  // start: later jobs wait too (else small jobs could starve it).
  bool gang_waits = false;
};
// Only workers heard from since `heard_since` are used: one that is going
// away would cost the whole pipeline a restart. `matching_registered`:
// registered workers of the device, busy or not.
// `stage_work`: each stage's work (empty: all equal); the heaviest stage
// gets the fastest of the chosen workers.
PipelinePlacement PlacePipeline(
    const std::string& device, size_t stages,
    const std::vector<WorkerRegistry::Worker>& available,
    size_t matching_registered, absl::Time heard_since,
    const std::vector<int64_t>& stage_work = {});

// Why queued work that asks for `device` waits, for people. `stages` > 0
// for a pipeline (a model-parallel job, or a partitioned job's recovery
// epochs), whose stages start together. `registered`:
// every registered worker; `available`: those that may take a task now.
// When no registered worker offers the device, it says so with the
// devices that are registered ("2 cpu"), rather than "waiting for an idle
// worker" while idle workers of another device are there.
std::string WaitMessage(const std::string& device, size_t stages,
                        const std::vector<WorkerRegistry::Worker>& registered,
                        const std::vector<WorkerRegistry::Worker>& available);

}  // namespace pnn

#endif  // PNN_COORDINATOR_PLACEMENT_H_
