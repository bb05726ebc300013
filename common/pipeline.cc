#include "common/pipeline.h"

#include <ATen/ATen.h>

#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/accounting.h"
#include "common/model.h"
#include "common/pipeline_schedule.h"
#include "common/precision.h"
#include "common/status_macros.h"
#include "common/training_internal.h"
#include "common/training_progress.h"
#include "common/weight_gradient_tape.h"

namespace pnn {
namespace {

using internal::Guarded;
using internal::MakeOptimizer;

using pnn::v1::SegmentTask;
using pnn::v1::TrainingConfig;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
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
  if (task.first_layer() < 2 || layers < 1 || task.layers_size() != layers ||
      task.input_shape().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage: layers ", task.first_layer(), "..", task.last_layer(),
        " need ", std::max(layers, 0), " layer specs and an input shape, got ",
        task.layers_size(),
        " layer specs (a stage after the first starts at layer 2 or later)"));
  }
  const auto shapes =
      InferShapes(TaskArchitecture(task), "pipeline stage layers");
  if (!shapes.ok()) return shapes.status();
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
  if (last && shapes->back().output != SampleShape{task.num_classes()}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage: the last stage must output ", task.num_classes(),
        " class scores, its layers output ",
        ShapeString(shapes->back().output)));
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

  // One micro-batch of the open batch, between its Forward and Backward.
  struct Micro {
    at::Tensor input;  // a leaf: its gradient goes back upstream
    at::Tensor output;
    at::Tensor labels;
    int64_t rows = 0;
    bool forwarded = false;
    bool done = false;  // backward has run
  };

  SegmentTask task;
  TrainOptions options;
  c10::Device device{c10::kCPU};
  SegmentModel model{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  // Backward in two parts: the weight gradients of a GPipe batch are one
  // product per layer at its end (1F1B: after each micro-batch).
  std::unique_ptr<WeightGradientTape> tape;
  // TF32 on for the stage's life when its task asks (its backward passes
  // run between Forward calls).
  std::unique_ptr<MatmulPrecision> matmul_precision;
  bool last = false;

  // A failed step spends the stage: its weights may be half-updated.
  absl::Status failed;
  bool finished = false;

  // The next batch expected; batches_per_epoch is fixed by the first one.
  int epoch = 1;
  int64_t next_batch = 1;
  int64_t batches_per_epoch = 0;

  // The batch being trained: its position, micro-batches and loss so far.
  bool batch_open = false;
  BatchPosition open;
  std::vector<Micro> micros;
  int backwards_done = 0;
  double batch_loss = 0;
  // Seconds spent computing: forward, backward, optimizer steps.
  double busy_seconds = 0;

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
    if (position.micro_batches < 1 ||
        (position.micro_batches > 1 && position.batch_rows < 1)) {
      return absl::FailedPreconditionError(
          absl::StrCat("pipeline stage ", task.segment_index(),
                       ": a batch needs at least "
                       "one micro-batch and, with several, its row count; got ",
                       position.micro_batches, " micro-batches of a ",
                       position.batch_rows, "-row batch"));
    }
    return absl::OkStatus();
  }

  // The micro-batch `position` names, checked against the open batch (or
  // opening the next one).
  absl::StatusOr<Micro*> TakeMicro(const BatchPosition& position) {
    if (!batch_open) {
      PNN_RETURN_IF_ERROR(CheckPosition(position));
      if (!progress.started()) {
        batches_per_epoch = position.batches_per_epoch;
        progress.Start(batches_per_epoch);
      }
      if (position.batch == 1) progress.BeginEpoch();
      batch_open = true;
      open = position;
      micros.assign(static_cast<size_t>(position.micro_batches), Micro());
      backwards_done = 0;
      batch_loss = 0;
      optimizer->zero_grad();
    } else if (position.epoch != open.epoch || position.batch != open.batch ||
               position.micro_batches != open.micro_batches ||
               position.batch_rows != open.batch_rows) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline stage ", task.segment_index(), " is in epoch ", open.epoch,
          ", batch ", open.batch, " (", open.micro_batches,
          " micro-batches) but got a micro-batch of epoch ", position.epoch,
          ", batch ", position.batch, " (", position.micro_batches,
          "): the stages are out of step"));
    }
    if (position.micro < 0 || position.micro >= open.micro_batches ||
        micros[static_cast<size_t>(position.micro)].forwarded) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline stage ", task.segment_index(), ": micro-batch ",
          position.micro + 1, " of ", open.micro_batches, " in epoch ",
          position.epoch, ", batch ", position.batch,
          " is repeated or out of range (the stages are out of step)"));
    }
    return &micros[static_cast<size_t>(position.micro)];
  }

  absl::Status ForwardUnguarded(const at::Tensor& input,
                                const at::Tensor& labels,
                                const BatchPosition& position,
                                PipelinePeer* downstream) {
    PNN_ASSIGN_OR_RETURN(Micro * micro, TakeMicro(position));
    const auto start = std::chrono::steady_clock::now();
    micro->input = input.to(device, at::kFloat).detach().requires_grad_(true);
    {
      const ForwardPrecision precision(task.training().precision(), device);
      tape->BeginForward(position.micro);
      micro->output = model->forward(micro->input, tape.get());
    }
    // Losses and the activations sent on are fp32 whatever the arithmetic.
    micro->output = micro->output.to(at::kFloat);
    micro->labels = labels;
    micro->rows = input.size(0);
    micro->forwarded = true;
    busy_seconds += SecondsSince(start);
    if (last) return absl::OkStatus();
    return downstream->Send(micro->output.detach(), labels, position);
  }

  // Backpropagates a micro-batch's loss into the stage: the last stage's
  // own cross-entropy (its share of the batch's mean), or the gradient the
  // rest of the pipeline returns. A non-finite loss is not
  // backpropagated. Returns the loss share and the input's gradient.
  absl::StatusOr<RemoteLoss> BackwardLoss(Micro& micro, int index,
                                      PipelinePeer* downstream) {
    constexpr absl::string_view kHint = "lower the learning rate";
    if (last) {
      const auto start = std::chrono::steady_clock::now();
      at::Tensor loss = at::cross_entropy_loss(
          micro.output, micro.labels.to(device, at::kLong));
      // One micro-batch: the batch's mean as it is, bit for bit.
      if (open.micro_batches > 1) {
        loss = loss * (static_cast<double>(micro.rows) /
                       static_cast<double>(open.batch_rows));
      }
      const double loss_value = loss.item<double>();
      PNN_RETURN_IF_ERROR(
          internal::CheckFiniteLoss(loss_value, open.epoch, open.batch, kHint));
      RemoteLoss result;
      result.output_gradient =
          tape->Backward(index, loss, at::Tensor(), micro.input);
      result.loss = loss_value;
      busy_seconds += SecondsSince(start);
      return result;
    }
    PNN_ASSIGN_OR_RETURN(RemoteLoss remote, downstream->Receive(index));
    if (!remote.output_gradient.defined() ||
        !remote.output_gradient.sizes().equals(micro.output.sizes())) {
      return absl::DataLossError(absl::StrCat(
          "pipeline stage ", task.segment_index(),
          ": the next stage returned a gradient of the wrong shape in "
          "epoch ",
          open.epoch, ", batch ", open.batch, ", micro-batch ", index + 1));
    }
    PNN_RETURN_IF_ERROR(
        internal::CheckFiniteLoss(remote.loss, open.epoch, open.batch, kHint));
    const auto start = std::chrono::steady_clock::now();
    RemoteLoss result;
    result.output_gradient =
        tape->Backward(index, micro.output,
                       remote.output_gradient.to(device, at::kFloat),
                       micro.input);
    result.loss = remote.loss;
    busy_seconds += SecondsSince(start);
    return result;
  }

  absl::StatusOr<RemoteLoss> BackwardUnguarded(int index,
                                               PipelinePeer* downstream) {
    if (!batch_open || index < 0 || index >= open.micro_batches ||
        !micros[static_cast<size_t>(index)].forwarded ||
        micros[static_cast<size_t>(index)].done) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pipeline stage ", task.segment_index(), ": backward of micro-batch ",
          index + 1, " that has not run forward or has run backward already"));
    }
    Micro& micro = micros[static_cast<size_t>(index)];
    PNN_ASSIGN_OR_RETURN(RemoteLoss result,
                         BackwardLoss(micro, index, downstream));
    // The micro-batch's graph is spent: free its activations.
    const int64_t rows = micro.rows;
    micro = Micro();
    micro.rows = rows;
    micro.forwarded = true;
    micro.done = true;
    batch_loss += result.loss;
    const bool batch_done = ++backwards_done == open.micro_batches;
    if (batch_done ||
        WeightGradientsPerMicroBatch(task.pipeline().schedule())) {
      const auto start = std::chrono::steady_clock::now();
      tape->AccumulateWeightGradients();
      busy_seconds += SecondsSince(start);
    }
    if (batch_done) {
      const auto start = std::chrono::steady_clock::now();
      optimizer->step();
      busy_seconds += SecondsSince(start);
      batch_open = false;
      int64_t rows = 0;
      for (const Micro& m : micros) rows += m.rows;
      EndBatch(open, rows, batch_loss);
    }
    return result;
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
  PNN_RETURN_IF_ERROR(CheckPrecision(task.training().precision(), device));
  return Guarded<std::unique_ptr<PipelineStageTrainer>>(
      "building pipeline stage",
      [&]() -> absl::StatusOr<std::unique_ptr<PipelineStageTrainer>> {
        auto state = std::make_unique<State>(options);
        state->task = task;
        state->device = device;
        state->last = task.segment_index() + 1 == task.segment_count();
        state->model = SegmentModel(TaskArchitecture(task));
        InitializeWeights(state->model, task.seed());
        if (task.has_resume()) {
          // A recovery stage starts from its segment's trained weights.
          PNN_RETURN_IF_ERROR(
              ImportWeights(task.resume().weights(), state->model));
        }
        state->model->to(device);
        state->model->train();
        state->optimizer = MakeOptimizer(state->model, task.training());
        state->tape =
            std::make_unique<WeightGradientTape>(state->model->parameters());
        state->matmul_precision = std::make_unique<MatmulPrecision>(
            task.training().precision(), device);
        state->progress.MeasureCudaDevice(internal::CudaIndex(device));
        return std::unique_ptr<PipelineStageTrainer>(
            new PipelineStageTrainer(std::move(state)));
      });
}

absl::Status PipelineStageTrainer::Forward(const at::Tensor& input,
                                           const at::Tensor& labels,
                                           const BatchPosition& position,
                                           PipelinePeer* downstream) {
  State& s = *state_;
  if (!s.failed.ok()) return s.failed;
  if (s.finished) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(), " has finished training"));
  }
  const SampleShape& shape = s.model->architecture().input_shape;
  if (!input.defined() || input.dim() != static_cast<int64_t>(shape.size()) + 1 ||
      !input.sizes().slice(1).equals(shape) || input.size(0) < 1 ||
      !labels.defined() || labels.dim() != 1 ||
      labels.size(0) != input.size(0)) {
    s.failed = absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " takes activations [batch, ", absl::StrJoin(shape, ", "),
        "] and one label per row; got ",
        input.defined() ? c10::str(input.sizes()) : "none", " and ",
        labels.defined() ? labels.numel() : 0, " labels"));
    return s.failed;
  }
  if (!s.last && downstream == nullptr) {
    s.failed = absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " is a middle stage and needs the next stage (downstream)"));
    return s.failed;
  }
  const absl::Status status =
      Guarded<bool>("pipeline stage", [&]() -> absl::StatusOr<bool> {
        PNN_RETURN_IF_ERROR(
            s.ForwardUnguarded(input, labels, position, downstream));
        return true;
      }).status();
  if (!status.ok()) s.failed = status;
  return status;
}

absl::StatusOr<RemoteLoss> PipelineStageTrainer::Backward(
    int micro, PipelinePeer* downstream) {
  State& s = *state_;
  if (!s.failed.ok()) return s.failed;
  if (!s.last && downstream == nullptr) {
    s.failed = absl::InvalidArgumentError(absl::StrCat(
        "pipeline stage ", s.task.segment_index(),
        " is a middle stage and needs the next stage (downstream)"));
    return s.failed;
  }
  auto result = Guarded<RemoteLoss>(
      "pipeline stage", [&] { return s.BackwardUnguarded(micro, downstream); });
  if (!result.ok()) s.failed = result.status();
  return result;
}

absl::StatusOr<RemoteLoss> PipelineStageTrainer::Step(
    const at::Tensor& input, const at::Tensor& labels,
    const BatchPosition& position, const DownstreamLoss& downstream) {
  const std::unique_ptr<PipelinePeer> peer =
      downstream ? BlockingPipelinePeer(downstream) : nullptr;
  BatchPosition whole = position;
  whole.micro = 0;
  whole.micro_batches = 1;
  whole.batch_rows = input.defined() && input.dim() > 0 ? input.size(0) : 0;
  PNN_RETURN_IF_ERROR(Forward(input, labels, whole, peer.get()));
  return Backward(0, peer.get());
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
        pnn::v1::TrainingCost* cost = result.mutable_cost();
        *cost = AnalyticTrainingCost(s.model->architecture(),
                                     s.task.training());
        s.progress.FillMeasuredCost(cost);
        FillPipelineCost(s.task, s.busy_seconds, cost);
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
