#include "common/partition.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/sil.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"

namespace pnn {
namespace {

// The fields every task of a job shares.
pnn::v1::SegmentTask NewTask(const pnn::v1::JobSpec& resolved,
                             int num_classes, const std::string& job_id) {
  pnn::v1::SegmentTask task;
  task.set_job_id(job_id);
  *task.mutable_dataset() = resolved.dataset();
  task.set_seed(resolved.seed());
  task.set_num_classes(num_classes);
  task.set_device(resolved.device());
  task.set_checkpoints_per_epoch(resolved.evaluations_per_epoch());
  return task;
}

// The unsplit network is one segment that reads the data and learns the
// classes: the same task type, no SIL.
pnn::v1::SegmentTask ConventionalTask(const pnn::v1::JobSpec& resolved,
                                      const Architecture& network,
                                      int num_classes,
                                      const std::string& job_id) {
  pnn::v1::SegmentTask task = NewTask(resolved, num_classes, job_id);
  task.set_segment_index(0);
  task.set_segment_count(1);
  SetTaskArchitecture(network, &task);
  *task.mutable_training() = resolved.training();
  task.set_resume_checkpoints(resolved.resume_checkpoints());
  return task;
}

// One segment of a cut network: a pipeline stage (model-parallel), or a
// segment that learns from the SIL tables `sil` (one per cut) alone.
pnn::v1::SegmentTask PartTask(const pnn::v1::JobSpec& resolved,
                              const SegmentLayout& segment, int segment_count,
                              const std::vector<at::Tensor>& sil,
                              const Architecture& network, int num_classes,
                              const std::string& job_id) {
  pnn::v1::SegmentTask task = NewTask(resolved, num_classes, job_id);
  task.set_segment_index(segment.index);
  task.set_segment_count(segment_count);
  SetTaskArchitecture(segment.architecture, &task);
  if (resolved.parallelism() == pnn::v1::PARALLELISM_MODEL_PARALLEL) {
    // End to end: every stage trains with the job's training config, and
    // its neighbours are filled in when all stages are placed. A stage
    // cannot resume alone: the pipeline restarts as a whole.
    *task.mutable_training() = resolved.training();
    task.mutable_pipeline()->set_micro_batches(
        resolved.pipeline().micro_batches());
    task.mutable_pipeline()->set_schedule(resolved.pipeline().schedule());
    return task;
  }
  *task.mutable_training() = SegmentTrainingConfig(resolved, segment.index);
  task.set_resume_checkpoints(resolved.resume_checkpoints());
  task.set_input_noise_std(resolved.sil().input_noise_std());
  const bool sequential =
      resolved.sil().input_mode() == pnn::v1::INPUT_MODE_PREVIOUS_OUTPUTS;
  if (segment.index > 0 && !sequential) {
    *task.mutable_input_sil() = TensorToProto(
        absl::StrCat("sil", segment.index), sil[segment.index - 1]);
  } else if (segment.index > 0) {
    // The layers before the segment, which AttachUpstream's weights fill.
    auto* upstream = task.mutable_upstream();
    upstream->mutable_layers()->Assign(
        network.layers.begin(),
        network.layers.begin() + (segment.first_layer() - 1));
    upstream->mutable_input_shape()->Assign(network.input_shape.begin(),
                                            network.input_shape.end());
  }
  if (segment.index + 1 < segment_count) {
    *task.mutable_target_sil() = TensorToProto(
        absl::StrCat("sil", segment.index + 1), sil[segment.index]);
  }
  return task;
}

}  // namespace

absl::StatusOr<std::vector<pnn::v1::SegmentTask>> PlanSegmentTasks(
    const pnn::v1::JobSpec& resolved, const ImageShape& image,
    int num_classes, const std::string& job_id) {
  PNN_RETURN_IF_ERROR(ValidateAgainstData(resolved, image, num_classes));
  PNN_ASSIGN_OR_RETURN(const Architecture network,
                       NetworkArchitecture(resolved, image, num_classes));
  PNN_ASSIGN_OR_RETURN(const std::vector<SegmentLayout> layout,
                       CutNetwork(resolved, network));
  std::vector<SampleShape> cut_shapes;
  for (size_t s = 1; s < layout.size(); ++s) {
    cut_shapes.push_back(layout[s].architecture.input_shape);
  }
  std::vector<at::Tensor> sil;
  try {
    PNN_ASSIGN_OR_RETURN(sil, DrawSilTables(resolved.sil(), resolved.seed(),
                                            num_classes, cut_shapes));
  } catch (const std::exception& error) {
    return absl::InternalError(
        absl::StrCat("drawing SIL tables: ", error.what()));
  }
  std::vector<pnn::v1::SegmentTask> tasks;
  if (resolved.parallelism() == pnn::v1::PARALLELISM_CONVENTIONAL) {
    tasks.push_back(ConventionalTask(resolved, network, num_classes, job_id));
    return tasks;
  }
  for (const SegmentLayout& segment : layout) {
    tasks.push_back(PartTask(resolved, segment,
                             static_cast<int>(layout.size()), sil, network,
                             num_classes, job_id));
  }
  return tasks;
}

bool NeedsUpstream(const pnn::v1::SegmentTask& task) {
  return task.segment_index() > 0 && !task.has_pipeline() &&
         task.input_case() != pnn::v1::SegmentTask::kInputSil &&
         task.upstream().segments_size() != task.segment_index();
}

absl::Status AttachUpstream(
    const std::vector<pnn::v1::SegmentWeights>& finished,
    pnn::v1::SegmentTask* task) {
  if (static_cast<int>(finished.size()) < task->segment_index()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "segment ", task->segment_index(), " needs the weights of ",
        task->segment_index(), " previous segments, ", finished.size(),
        " are available"));
  }
  auto* upstream = task->mutable_upstream();
  upstream->clear_segments();
  for (int i = 0; i < task->segment_index(); ++i) {
    if (finished[i].segment_index() != i) {
      return absl::FailedPreconditionError(
          absl::StrCat("weights of segment ", i, " are missing"));
    }
    *upstream->add_segments() = finished[i];
  }
  return absl::OkStatus();
}

}  // namespace pnn
