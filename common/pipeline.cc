#include "common/pipeline.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/accounting.h"
#include "common/model.h"
#include "common/status_macros.h"
#include "common/training_internal.h"

namespace pnn {
namespace {

using internal::Guarded;
using internal::MakeOptimizer;

using Clock = std::chrono::steady_clock;
using pnn::v1::SegmentTask;
using pnn::v1::TrainingConfig;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

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

  bool started = false;
  Clock::time_point start;
  Clock::time_point epoch_start;
  Clock::time_point last_batch_end;
  double cpu_start = 0;
  double cpu_at_last_batch = 0;
  PeakRssMeter memory;
  double loss_sum = 0;  // in the current epoch
  int64_t seen = 0;     // samples in the current epoch
  int64_t samples_total = 0;
  std::vector<pnn::v1::EpochMetrics> epochs;

  void EmitCheckpoint(int64_t batch) {
    if (!options.on_checkpoint) return;
    pnn::v1::Checkpoint checkpoint;
    checkpoint.set_epoch(epoch);
    checkpoint.set_batches_done(batch);
    checkpoint.set_epochs_done((epoch - 1) +
                               static_cast<double>(batch) /
                                   static_cast<double>(batches_per_epoch));
    checkpoint.set_elapsed_seconds(SecondsBetween(start, Clock::now()));
    checkpoint.set_cpu_seconds(ProcessCpuSeconds() - cpu_start);
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

  absl::StatusOr<RemoteLoss> StepUnguarded(const at::Tensor& input,
                                           const at::Tensor& labels,
                                           const BatchPosition& position,
                                           const DownstreamLoss& downstream) {
    const int64_t rows = input.size(0);
    const Clock::time_point now = Clock::now();
    if (!started) {
      started = true;
      batches_per_epoch = position.batches_per_epoch;
      memory.Start();
      cpu_start = ProcessCpuSeconds();
      start = now;
    }
    if (position.batch == 1) {
      epoch_start = now;
      loss_sum = 0;
      seen = 0;
    }
    optimizer->zero_grad();
    // A leaf of its own: its gradient is what goes back upstream.
    const at::Tensor stage_input =
        input.to(device, at::kFloat).detach().requires_grad_(true);
    const at::Tensor output = model->forward(stage_input);
    double loss_value = 0;
    if (last) {
      const at::Tensor loss =
          at::cross_entropy_loss(output, labels.to(device, at::kLong));
      loss_value = loss.item<double>();
      if (std::isfinite(loss_value)) loss.backward();
    } else {
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
      loss_value = remote.loss;
      if (std::isfinite(loss_value)) {
        output.backward(remote.output_gradient.to(device, at::kFloat));
      }
    }
    if (!std::isfinite(loss_value)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "training diverged: loss is ", loss_value, " in epoch ",
          position.epoch, ", batch ", position.batch,
          "; lower the learning rate"));
    }
    optimizer->step();

    RemoteLoss result;
    result.output_gradient = stage_input.grad();
    result.loss = loss_value;

    loss_sum += loss_value * static_cast<double>(rows);
    seen += rows;
    const int64_t batch = position.batch;
    if (options.on_batches && options.batch_report_interval > 0 &&
        (batch % options.batch_report_interval == 0 ||
         batch == batches_per_epoch)) {
      options.on_batches(epoch, batch, batches_per_epoch,
                         loss_sum / static_cast<double>(seen));
    }
    if (batch < batches_per_epoch) {
      if (position.checkpoint) EmitCheckpoint(batch);
      ++next_batch;
    } else {
      pnn::v1::EpochMetrics metrics;
      metrics.set_epoch(epoch);
      metrics.set_train_loss(loss_sum / static_cast<double>(seen));
      metrics.set_seconds(SecondsBetween(epoch_start, Clock::now()));
      metrics.set_samples_per_second(static_cast<double>(seen) /
                                     std::max(metrics.seconds(), 1e-9));
      metrics.set_peak_rss_growth_bytes(memory.PeakGrowthBytes());
      samples_total += seen;
      epochs.push_back(metrics);
      if (options.on_epoch) options.on_epoch(metrics, model);
      // As in TrainSegment: the epoch's last evaluation point follows its
      // metrics.
      if (position.checkpoint) EmitCheckpoint(batch);
      ++epoch;
      next_batch = 1;
    }
    last_batch_end = Clock::now();
    cpu_at_last_batch = ProcessCpuSeconds();
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
        auto state = std::make_unique<State>();
        state->task = task;
        state->options = options;
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
  if (static_cast<int>(s.epochs.size()) != epochs) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " was told to finish after ", s.epochs.size(), " of ", epochs,
        " epochs (epoch ", s.epoch,
        ", batch ", s.next_batch, " was next)"));
  }
  using Result = pnn::v1::SegmentResult;
  return Guarded<Result>(
      "finishing pipeline stage", [&]() -> absl::StatusOr<Result> {
        Result result;
        result.set_segment_index(s.task.segment_index());
        *result.mutable_weights() =
            ExportWeights(s.model, s.task.segment_index());
        for (const auto& epoch : s.epochs) *result.add_epochs() = epoch;
        const std::vector<int> widths(s.task.widths().begin(),
                                      s.task.widths().end());
        pnn::v1::TrainingCost* cost = result.mutable_cost();
        *cost = AnalyticTrainingCost(widths, /*leading_activation=*/true,
                                     s.task.training());
        const double seconds = SecondsBetween(s.start, s.last_batch_end);
        cost->set_wall_seconds(seconds);
        cost->set_samples_per_second(static_cast<double>(s.samples_total) /
                                     std::max(seconds, 1e-9));
        cost->set_peak_rss_growth_bytes(s.memory.PeakGrowthBytes());
        cost->set_cpu_seconds(s.cpu_at_last_batch - s.cpu_start);
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
  return static_cast<int>(state_->epochs.size());
}

}  // namespace pnn
