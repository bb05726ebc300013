#include "coordinator/layer_profiler.h"

#include <grpcpp/client_context.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "coordinator/placement.h"

namespace pnn {

pnn::v1::SegmentTask ProfileTask(const pnn::v1::JobSpec& resolved,
                                 const Architecture& network,
                                 const std::string& job_id) {
  pnn::v1::SegmentTask task;
  task.set_job_id(job_id);
  task.set_segment_index(0);
  task.set_segment_count(1);
  SetTaskArchitecture(network, &task);
  *task.mutable_training() = resolved.training();
  task.set_device(resolved.device());
  task.set_seed(resolved.seed());
  task.mutable_profile()->set_batches(resolved.auto_cut().profile_batches());
  return task;
}

std::optional<size_t> ChooseProfiler(
    const std::string& device,
    const std::vector<WorkerRegistry::Worker>& available) {
  std::optional<size_t> chosen;
  for (size_t i = 0; i < available.size(); ++i) {
    if (!DeviceMatches(device, available[i].info.device())) continue;
    if (!chosen ||
        WorkerSpeed(available[i]) > WorkerSpeed(available[*chosen])) {
      chosen = i;
    }
  }
  return chosen;
}

absl::StatusOr<LayerTimes> ProfileOnWorker(TaskDriver& driver,
                                           const WorkerRegistry::Worker& worker,
                                           const pnn::v1::SegmentTask& task,
                                           absl::Duration timeout,
                                           grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoSeconds(timeout));
  pnn::v1::TrainSegmentRequest request;
  *request.mutable_task() = task;
  LayerTimes times;
  const TaskRun run = driver.Run(
      worker.info.address(), request, context,
      [&times](const pnn::v1::TrainSegmentUpdate& update, int64_t) {
        if (!update.has_result()) return;
        const auto& seconds = update.result().layer_seconds_per_batch();
        times.seconds_per_batch.assign(seconds.begin(), seconds.end());
      });
  const std::string name =
      worker.info.name().empty() ? worker.info.address() : worker.info.name();
  if (!run.status.ok()) {
    return absl::Status(run.status.code(),
                        absl::StrCat("profiling the layers on worker ", name,
                                     ": ", run.status.message()));
  }
  if (times.seconds_per_batch.size() !=
      static_cast<size_t>(task.layers_size())) {
    return absl::DataLossError(absl::StrCat(
        "profiling the layers on worker ", name, ": it timed ",
        times.seconds_per_batch.size(), " of ", task.layers_size(), " layers"));
  }
  times.profiled_on = absl::StrCat("worker ", name, " (", worker.info.device(),
                                   ", ", worker.info.threads(), " thread",
                                   worker.info.threads() == 1 ? "" : "s", ")");
  return times;
}

}  // namespace pnn
