#include "common/pipeline.h"

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/accounting.h"
#include "common/model.h"
#include "common/status_macros.h"
#include "common/training_internal.h"
#include "common/training_progress.h"

namespace pnn {
namespace {

using internal::Guarded;
using internal::MakeOptimizer;

using pnn::v1::SegmentTask;
using pnn::v1::TrainingConfig;

absl::Status ValidateStageTask(const SegmentTask& task) {
  if (!task.has_pipeline()) {
    return absl::InvalidArgumentError(
        "pipeline stage: the task has no pipeline settings (not a "
        "model-parallel task)");
  }
  if (task.segment_index() < 1 ||
      task.segment_index() >= task.segment_count()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage: segment_index ", task.segment_index(),
        " must be in [1, segment_count = ", task.segment_count(),
        "); the first stage trains with TrainSegment"));
  }
  const int layers = task.last_layer() - task.first_layer() + 1;
  if (task.first_layer() < 2 || layers < 1 ||
      task.widths_size() != layers + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage: layers ", task.first_layer(), "..", task.last_layer(),
        " need ", layers + 1, " widths, got ", task.widths_size(),
        " (a stage after the first starts at layer 2 or later)"));
  }
  for (int width : task.widths()) {
    if (width < 1) {
      return absl::InvalidArgumentError(
          "pipeline stage: every width must be positive");
    }
  }
  const TrainingConfig& training = task.training();
  if (training.epochs() < 1 || training.batch_size() < 1 ||
      !(training.learning_rate() > 0) ||
      training.optimizer() == pnn::v1::OPTIMIZER_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "pipeline stage: training must be resolved (epochs, batch_size, "
        "learning_rate, optimizer)");
  }
  if (task.num_classes() < 2) {
    return absl::InvalidArgumentError(
        "pipeline stage: num_classes must be >= 2");
  }
  const bool last = task.segment_index() + 1 == task.segment_count();
  if (last && task.widths(task.widths_size() - 1) != task.num_classes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage: the last stage must output ", task.num_classes(),
        " class scores, its widths end with ",
        task.widths(task.widths_size() - 1)));
  }
  if (task.input_case() != SegmentTask::INPUT_NOT_SET ||
      task.has_target_sil()) {
    return absl::InvalidArgumentError(
        "pipeline stage: a stage learns from its neighbours' activations "
        "and gradients; it takes no SIL tables or upstream segments");
  }
  return absl::OkStatus();
}

}  // namespace

struct PipelineStageTrainer::State {
  explicit State(const TrainOptions& train_options)
      : options(train_options),
        progress(options.on_batches, options.batch_report_interval) {}

  SegmentTask task;
  TrainOptions options;
  c10::Device device{c10::kCPU};
  MlpSegment model{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  bool last = false;

  // A failed step spends the stage: its weights may be half-updated.
  absl::Status failed;
  bool finished = false;

  // The next batch expected; batches_per_epoch is fixed by the first one.
  int epoch = 1;
  int64_t next_batch = 1;
  int64_t batches_per_epoch = 0;

  // Progress, epochs, checkpoints' times and the measured cost: the same
  // bookkeeping as TrainSegment's loop. Starts with the first batch.
  internal::TrainingProgress progress;

  void EmitCheckpoint(int64_t batch) {
    if (!options.on_checkpoint) return;
    pnn::v1::Checkpoint checkpoint = progress.NewCheckpoint(epoch, batch);
    *checkpoint.mutable_weights() = ExportWeights(model, task.segment_index());
    options.on_checkpoint(std::move(checkpoint));
  }

  absl::Status CheckPosition(const BatchPosition& position) const {
    if (position.batches_per_epoch < 1 ||
        (batches_per_epoch > 0 &&
         position.batches_per_epoch != batches_per_epoch)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline stage ", task.segment_index(), ": batches_per_epoch ",
          position.batches_per_epoch, " differs from the ", batches_per_epoch,
          " this run started with"));
    }
    if (position.epoch != epoch || position.batch != next_batch) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline stage ", task.segment_index(), " expected epoch ", epoch,
          ", batch ", next_batch, " but got epoch ", position.epoch,
          ", batch ", position.batch,
          " (a repeated or lost batch: the stages are out of step)"));
    }
    if (position.epoch > task.training().epochs() ||
        position.batch > position.batches_per_epoch) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline stage ", task.segment_index(), ": epoch ", position.epoch,
          ", batch ", position.batch, " is past the end of training (",
          task.training().epochs(), " epochs of ", position.batches_per_epoch,
          " batches)"));
    }
    return absl::OkStatus();
  }

  // Backpropagates the batch's loss into the stage: the last stage's own
  // cross-entropy, or the gradient the rest of the pipeline returns. A
  // non-finite loss is not backpropagated. Returns the loss.
  absl::StatusOr<double> Backward(const at::Tensor& output,
                                  const at::Tensor& labels,
                                  const BatchPosition& position,
                                  const DownstreamLoss& downstream) {
    constexpr absl::string_view kHint = "lower the learning rate";
    if (last) {
      const at::Tensor loss =
          at::cross_entropy_loss(output, labels.to(device, at::kLong));
      const double loss_value = loss.item<double>();
      PNN_RETURN_IF_ERROR(internal::CheckFiniteLoss(
          loss_value, position.epoch, position.batch, kHint));
      loss.backward();
      return loss_value;
    }
    PNN_ASSIGN_OR_RETURN(RemoteLoss remote,
                         downstream(output.detach(), labels, position));
    if (!remote.output_gradient.defined() ||
        !remote.output_gradient.sizes().equals(output.sizes())) {
      return absl::DataLossError(absl::StrCat(
          "pipeline stage ", task.segment_index(),
          ": the next stage returned a gradient of the wrong shape in "
          "epoch ",
          position.epoch, ", batch ", position.batch));
    }
    PNN_RETURN_IF_ERROR(internal::CheckFiniteLoss(
        remote.loss, position.epoch, position.batch, kHint));
    output.backward(remote.output_gradient.to(device, at::kFloat));
    return remote.loss;
  }

  // After a batch's step: progress, and at the epoch's end its metrics;
  // checkpoints where the first stage asks for them.
  void EndBatch(const BatchPosition& position, int64_t rows, double loss) {
    const int64_t batch = position.batch;
    progress.AddBatch(epoch, batch, rows, loss);
    if (batch < batches_per_epoch) {
      if (position.checkpoint) EmitCheckpoint(batch);
      ++next_batch;
    } else {
      const pnn::v1::EpochMetrics metrics = progress.EndEpoch(epoch);
      if (options.on_epoch) options.on_epoch(metrics, model);
      // As in TrainSegment: the epoch's last evaluation point follows its
      // metrics.
      if (position.checkpoint) EmitCheckpoint(batch);
      ++epoch;
      next_batch = 1;
    }
    progress.MarkEnd();
  }

  absl::StatusOr<RemoteLoss> StepUnguarded(const at::Tensor& input,
                                           const at::Tensor& labels,
                                           const BatchPosition& position,
                                           const DownstreamLoss& downstream) {
    if (!progress.started()) {
      batches_per_epoch = position.batches_per_epoch;
      progress.Start(batches_per_epoch);
    }
    if (position.batch == 1) progress.BeginEpoch();
    optimizer->zero_grad();
    // A leaf of its own: its gradient is what goes back upstream.
    const at::Tensor stage_input =
        input.to(device, at::kFloat).detach().requires_grad_(true);
    const at::Tensor output = model->forward(stage_input);
    PNN_ASSIGN_OR_RETURN(const double loss,
                         Backward(output, labels, position, downstream));
    optimizer->step();
    RemoteLoss result;
    result.output_gradient = stage_input.grad();
    result.loss = loss;
    EndBatch(position, input.size(0), loss);
    return result;
  }
};

PipelineStageTrainer::PipelineStageTrainer(std::unique_ptr<State> state)
    : state_(std::move(state)) {}

PipelineStageTrainer::~PipelineStageTrainer() = default;

absl::StatusOr<std::unique_ptr<PipelineStageTrainer>>
PipelineStageTrainer::Create(const SegmentTask& task,
                             const TrainOptions& options) {
  PNN_RETURN_IF_ERROR(ValidateStageTask(task));
  // torch's and OpenBLAS's threads alike: with OpenBLAS on more threads
  // than the first stage, the last bits of a product could differ from
  // conventional training's.
  PNN_RETURN_IF_ERROR(SetTrainingThreads(options.threads));
  PNN_ASSIGN_OR_RETURN(
      const c10::Device device,
      ResolveDevice(task.device().empty() ? options.device : task.device()));
  return Guarded<std::unique_ptr<PipelineStageTrainer>>(
      "building pipeline stage",
      [&]() -> absl::StatusOr<std::unique_ptr<PipelineStageTrainer>> {
        auto state = std::make_unique<State>(options);
        state->task = task;
        state->device = device;
        state->last = task.segment_index() + 1 == task.segment_count();
        const std::vector<int> widths(task.widths().begin(),
                                      task.widths().end());
        state->model =
            MlpSegment(task.first_layer(), widths, task.activation());
        InitializeWeights(state->model, task.seed());
        state->model->to(device);
        state->model->train();
        state->optimizer = MakeOptimizer(state->model, task.training());
        return std::unique_ptr<PipelineStageTrainer>(
            new PipelineStageTrainer(std::move(state)));
      });
}

absl::StatusOr<RemoteLoss> PipelineStageTrainer::Step(
    const at::Tensor& input, const at::Tensor& labels,
    const BatchPosition& position, const DownstreamLoss& downstream) {
  State& s = *state_;
  if (!s.failed.ok()) return s.failed;
  if (s.finished) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(), " has finished training"));
  }
  if (absl::Status in_step = s.CheckPosition(position); !in_step.ok()) {
    s.failed = in_step;
    return in_step;
  }
  const int width = s.task.widths(0);
  if (!input.defined() || input.dim() != 2 || input.size(1) != width ||
      input.size(0) < 1 || !labels.defined() || labels.dim() != 1 ||
      labels.size(0) != input.size(0)) {
    s.failed = absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " takes activations [batch, ", width, "] and one label per row; got ",
        input.defined() ? input.dim() : 0, " dimensions and ",
        labels.defined() ? labels.numel() : 0, " labels"));
    return s.failed;
  }
  if (!s.last && !downstream) {
    s.failed = absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " is a middle stage and needs the next stage (downstream)"));
    return s.failed;
  }
  auto result = Guarded<RemoteLoss>("pipeline stage", [&] {
    return s.StepUnguarded(input, labels, position, downstream);
  });
  if (!result.ok()) s.failed = result.status();
  return result;
}

absl::StatusOr<pnn::v1::SegmentResult> PipelineStageTrainer::Finish() {
  State& s = *state_;
  if (!s.failed.ok()) return s.failed;
  if (s.finished) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(), " has finished already"));
  }
  const int epochs = s.task.training().epochs();
  if (static_cast<int>(s.progress.epochs().size()) != epochs) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " was told to finish after ", s.progress.epochs().size(), " of ",
        epochs, " epochs (epoch ", s.epoch, ", batch ", s.next_batch,
        " was next)"));
  }
  using Result = pnn::v1::SegmentResult;
  return Guarded<Result>(
      "finishing pipeline stage", [&]() -> absl::StatusOr<Result> {
        Result result;
        result.set_segment_index(s.task.segment_index());
        *result.mutable_weights() =
            ExportWeights(s.model, s.task.segment_index());
        for (const auto& epoch : s.progress.epochs()) {
          *result.add_epochs() = epoch;
        }
        const std::vector<int> widths(s.task.widths().begin(),
                                      s.task.widths().end());
        pnn::v1::TrainingCost* cost = result.mutable_cost();
        *cost = AnalyticTrainingCost(widths, /*leading_activation=*/true,
                                     s.task.training());
        s.progress.FillMeasuredCost(cost);
        // The activations arrive with each batch; no data set is held.
        cost->set_dataset_bytes(0);
        s.finished = true;
        return result;
      });
}

int PipelineStageTrainer::segment_index() const {
  return state_->task.segment_index();
}

bool PipelineStageTrainer::is_last() const { return state_->last; }

int PipelineStageTrainer::epochs_done() const {
  return static_cast<int>(state_->progress.epochs().size());
}

}  // namespace pnn
