// Measures a job's layers before its cuts are chosen
// (BALANCE_OBJECTIVE_MEASURED_TIME): a profiling task (SegmentTask.profile,
// the whole network as segment 0 of 1) on the fastest idle worker of the
// job's device, through the same TrainSegment stream as training. The
// worker times each layer alone, so a network too large for one device
// is measured without being built whole.
//
// Thread safety: ProfileOnWorker blocks the calling thread for the pass
// (seconds) and holds no lock; the caller claims the worker for its
// duration (WorkerRegistry::Claim) so that no task is sent to it meanwhile.
#ifndef PNN_COORDINATOR_LAYER_PROFILER_H_
#define PNN_COORDINATOR_LAYER_PROFILER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auto_cut.h"
#include "common/layers.h"
#include "coordinator/task_driver.h"
#include "coordinator/worker_registry.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// The profiling task for `resolved` (auto_cut with measured time) on
// `network`: its layers, batch size, optimizer, precision and device.
pnn::v1::SegmentTask ProfileTask(const pnn::v1::JobSpec& resolved,
                                 const Architecture& network,
                                 const std::string& job_id);

// Position in `available` of the fastest worker (WorkerSpeed) offering
// `device`; none when no such worker is idle.
std::optional<size_t> ChooseProfiler(
    const std::string& device,
    const std::vector<WorkerRegistry::Worker>& available);

// Runs `task` on `worker` with `driver` in `context` (fresh; the caller
// may cancel it from another thread), waiting at most `timeout`; the
// layers' seconds per batch, described as measured on that worker. The
// worker's error (with its name) when the pass fails; DATA_LOSS when the
// result does not time every layer.
absl::StatusOr<LayerTimes> ProfileOnWorker(TaskDriver& driver,
                                           const WorkerRegistry::Worker& worker,
                                           const pnn::v1::SegmentTask& task,
                                           absl::Duration timeout,
                                           grpc::ClientContext* context);

}  // namespace pnn

#endif  // PNN_COORDINATOR_LAYER_PROFILER_H_
