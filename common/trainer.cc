#include "common/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <dlfcn.h>
#include <torch/cuda.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/accounting.h"
#include "common/job_spec.h"
#include "common/pipeline_schedule.h"
#include "common/precision.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "common/training_internal.h"
#include "common/training_progress.h"
#include "common/weight_gradient_tape.h"

namespace pnn {
namespace {

using internal::Guarded;
using internal::MakeOptimizer;

using pnn::v1::EpochMetrics;
using pnn::v1::SegmentTask;
using pnn::v1::TrainingConfig;

// Independent random streams derived from the job seed.
constexpr uint64_t kShuffleStream = 0x7368756666ULL;
constexpr uint64_t kNoiseStream = 0x6e6f697365ULL;

enum class LossKind { kMse, kCrossEntropy };

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A RemoteLossFn as a PipelinePeer: Receive makes the blocking call with
// the output that Send kept.
class RemoteLossPeer final : public PipelinePeer {
 public:
  explicit RemoteLossPeer(RemoteLossFn loss) : loss_(std::move(loss)) {}

  absl::Status Send(const at::Tensor& output, const at::Tensor& labels,
                    const BatchPosition& position) override {
    if (position.micro == 0) sent_.clear();
    sent_.push_back({output, labels, position});
    return absl::OkStatus();
  }

  absl::StatusOr<RemoteLoss> Receive(int micro) override {
    if (micro < 0 || micro >= static_cast<int>(sent_.size())) {
      return absl::InternalError(
          "pipeline: gradient of a micro-batch never "
          "sent");
    }
    const Sent& sent = sent_[static_cast<size_t>(micro)];
    return loss_(sent.output, sent.labels, sent.position);
  }

 private:
  struct Sent {
    at::Tensor output;
    at::Tensor labels;
    BatchPosition position;
  };
  const RemoteLossFn loss_;
  std::vector<Sent> sent_;
};

// A pipeline's first stage, as TrainingLoop sees it.
struct FirstStage {
  PipelinePeer* peer = nullptr;
  int micro_batches = 1;
  pnn::v1::PipelineSchedule schedule = pnn::v1::PIPELINE_SCHEDULE_GPIPE;
  int stages = 2;
};

// Builds (input, target) on the training device for the sample indices
// (on that device) of one batch.
using BatchFn =
    std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&)>;

// Bytes of the optimizer's state (torch's archive format), and back.
std::string SaveOptimizerState(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

void LoadOptimizerState(const std::string& bytes,
                        torch::optim::Optimizer& optimizer,
                        c10::Device device) {
  torch::serialize::InputArchive archive;
  std::istringstream in(bytes);
  archive.load_from(in, device);
  optimizer.load(archive);
}

// The loop that TrainSegment and TrainNetwork share: shuffled batches,
// a local loss (or the pipeline's remote one), one optimizer step per
// batch. Progress, checkpoints' positions and times, the divergence check
// and the measured cost are the TrainingProgress that the pipeline stages
// share. One Run per instance.
class TrainingLoop {
 public:
  TrainingLoop(SegmentModel& model, int segment_index, int64_t samples,
               const BatchFn& make_batch, LossKind loss_kind,
               const TrainingConfig& config, uint64_t seed,
               c10::Device device, const TrainOptions& options)
      : model_(model),
        segment_index_(segment_index),
        samples_(samples),
        make_batch_(make_batch),
        loss_kind_(loss_kind),
        config_(config),
        seed_(seed),
        device_(device),
        options_(options),
        progress_(options.on_batches, options.batch_report_interval) {}

  // Trains every epoch not yet done and returns them all (a resumed run's
  // earlier ones first); the measured cost goes into *cost.
  absl::StatusOr<std::vector<EpochMetrics>> Run(pnn::v1::TrainingCost* cost);

  // Makes this loop a pipeline's first stage; call before Run.
  void SetFirstStage(const FirstStage& stage) { stage_ = stage; }
  // Seconds spent computing (batches, forward, backward, optimizer step).
  double busy_seconds() const { return busy_seconds_; }

 private:
  // Continues from `state`: weights, optimizer and shuffle order.
  absl::Status Resume(const pnn::v1::TrainingState& state);
  absl::Status RunEpoch(int epoch);
  // One optimizer step on the samples `indices`; returns the batch's mean
  // loss as a scalar tensor, not yet read (see ReadLosses).
  absl::StatusOr<at::Tensor> TrainBatch(const at::Tensor& indices,
                                        const BatchPosition& position);
  // TrainBatch for a pipeline's first stage: the batch's micro-batches in
  // the schedule's order, one optimizer step.
  absl::StatusOr<at::Tensor> TrainPipelinedBatch(const at::Tensor& indices,
                                                 const BatchPosition& position);
  // Backpropagates the batch's local loss; returns it (detached).
  at::Tensor Backward(const at::Tensor& output, const at::Tensor& target);
  // Whether the losses trained so far are read after the batch at
  // `position`: every batch on the CPU, where reading costs nothing; on a
  // GPU, where reading waits for the device to finish, only where
  // progress, a checkpoint or the epoch's end needs them.
  bool ReadsLossesAfter(const BatchPosition& position) const;
  // Reads the pending losses in one transfer: checks each is finite (the
  // divergence error names its batch) and counts them into the progress.
  absl::Status ReadLosses(int epoch);
  void EmitCheckpoint(int epoch, int64_t batch, bool with_state);

  SegmentModel& model_;
  const int segment_index_;
  const int64_t samples_;
  const BatchFn make_batch_;
  const LossKind loss_kind_;
  const TrainingConfig& config_;
  const uint64_t seed_;
  const c10::Device device_;
  const TrainOptions& options_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  at::Generator shuffle_generator_;
  int64_t batch_size_ = 1;
  int64_t batches_ = 1;
  internal::TrainingProgress progress_;
  FirstStage stage_;
  // Every step's backward in two parts (common/weight_gradient_tape.h):
  // the same arithmetic as autograd's, without its slow weight-gradient
  // path for wide layers on the CPU; a pipeline also defers the weight
  // gradients of its micro-batches.
  std::unique_ptr<WeightGradientTape> tape_;
  double busy_seconds_ = 0;
  struct PendingLoss {
    int64_t batch = 0;
    int64_t rows = 0;
    at::Tensor loss;
  };
  std::vector<PendingLoss> pending_losses_;
};

absl::StatusOr<std::vector<EpochMetrics>> TrainingLoop::Run(
    pnn::v1::TrainingCost* cost) {
  if (samples_ < 1) {
    return absl::FailedPreconditionError("no training samples");
  }
  PNN_RETURN_IF_ERROR(CheckPrecision(config_.precision(), device_));
  const MatmulPrecision matmul_precision(config_.precision(), device_);
  model_->to(device_);
  model_->train();
  optimizer_ = MakeOptimizer(model_, config_);
  tape_ = std::make_unique<WeightGradientTape>(model_->parameters());
  shuffle_generator_ = at::detail::createCPUGenerator(seed_ ^ kShuffleStream);
  batch_size_ = config_.batch_size();
  batches_ = (samples_ + batch_size_ - 1) / batch_size_;
  int first_epoch = 1;
  if (options_.resume != nullptr) {
    PNN_RETURN_IF_ERROR(Resume(*options_.resume));
    first_epoch = options_.resume->epochs_done() + 1;
  }
  // The device's peak starts at what it holds now: the model and the data
  // already resident there count, as in torch.cuda.max_memory_allocated().
  progress_.MeasureCudaDevice(internal::CudaIndex(device_));
  progress_.Start(batches_);
  for (int epoch = first_epoch; epoch <= config_.epochs(); ++epoch) {
    PNN_RETURN_IF_ERROR(RunEpoch(epoch));
  }
  progress_.MarkEnd();
  progress_.FillMeasuredCost(cost);
  return progress_.epochs();
}

absl::Status TrainingLoop::Resume(const pnn::v1::TrainingState& state) {
  if (state.epochs_done() < 0 || state.epochs_done() > config_.epochs()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "resume state: epochs_done ", state.epochs_done(), " is outside [0, ",
        config_.epochs(), "]"));
  }
  PNN_RETURN_IF_ERROR(ImportWeights(state.weights(), model_));
  if (!state.optimizer_state().empty()) {
    LoadOptimizerState(state.optimizer_state(), *optimizer_, device_);
  }
  // The same shuffles as an uninterrupted run: replay the permutations of
  // the epochs already trained.
  for (int epoch = 1; epoch <= state.epochs_done(); ++epoch) {
    (void)at::randperm(samples_, shuffle_generator_, at::kLong);
  }
  progress_.Resume({state.epochs().begin(), state.epochs().end()},
                   state.seconds());
  return absl::OkStatus();
}

absl::Status TrainingLoop::RunEpoch(int epoch) {
  progress_.BeginEpoch();
  // Drawn on the CPU (the same order on every device), moved once.
  const at::Tensor order =
      at::randperm(samples_, shuffle_generator_, at::kLong).to(device_);
  for (int64_t batch = 1; batch <= batches_; ++batch) {
    if (options_.should_stop && options_.should_stop()) {
      return absl::CancelledError(absl::StrCat(
          "training cancelled in epoch ", epoch, ", batch ", batch));
    }
    BatchPosition position;
    position.epoch = epoch;
    position.batch = batch;
    position.batches_per_epoch = batches_;
    position.checkpoint =
        options_.on_checkpoint != nullptr &&
        internal::IsCheckpointBatch(batch, batches_,
                                    options_.checkpoints_per_epoch);
    const int64_t begin = (batch - 1) * batch_size_;
    const at::Tensor indices =
        order.slice(0, begin, std::min(samples_, begin + batch_size_));
    PNN_ASSIGN_OR_RETURN(at::Tensor loss, TrainBatch(indices, position));
    pending_losses_.push_back({batch, indices.size(0), std::move(loss)});
    if (ReadsLossesAfter(position)) PNN_RETURN_IF_ERROR(ReadLosses(epoch));
    // The epoch's last evaluation point waits for its metrics below, so
    // that a resumable state includes them.
    if (position.checkpoint && batch < batches_) {
      EmitCheckpoint(epoch, batch, /*with_state=*/false);
    }
  }
  const EpochMetrics metrics = progress_.EndEpoch(epoch);
  if (options_.on_epoch) options_.on_epoch(metrics, model_);
  if (options_.on_checkpoint &&
      (options_.resume_checkpoints || options_.checkpoints_per_epoch > 0)) {
    // One message serves both: the state's weights are the evaluation
    // point's weights.
    EmitCheckpoint(epoch, batches_, options_.resume_checkpoints);
  }
  return absl::OkStatus();
}

bool TrainingLoop::ReadsLossesAfter(const BatchPosition& position) const {
  const int64_t interval = options_.batch_report_interval;
  return device_.is_cpu() || position.checkpoint ||
         position.batch == position.batches_per_epoch ||
         (interval > 0 && position.batch % interval == 0);
}

absl::Status TrainingLoop::ReadLosses(int epoch) {
  if (pending_losses_.empty()) return absl::OkStatus();
  std::vector<at::Tensor> losses;
  losses.reserve(pending_losses_.size());
  for (const PendingLoss& pending : pending_losses_) {
    losses.push_back(pending.loss.reshape({}));
  }
  const at::Tensor values = at::stack(losses).to(at::kCPU, at::kDouble);
  const double* value = values.data_ptr<double>();
  std::vector<PendingLoss> read;
  read.swap(pending_losses_);
  for (size_t i = 0; i < read.size(); ++i) {
    PNN_RETURN_IF_ERROR(
        internal::CheckFiniteLoss(value[i], epoch, read[i].batch,
                                  "lower the learning rate or the SIL kappa"));
    progress_.AddBatch(epoch, read[i].batch, read[i].rows, value[i]);
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> TrainingLoop::TrainBatch(
    const at::Tensor& indices, const BatchPosition& position) {
  if (stage_.peer != nullptr) return TrainPipelinedBatch(indices, position);
  const auto [input, target] = make_batch_(indices);
  optimizer_->zero_grad();
  at::Tensor output;
  {
    const ForwardPrecision precision(config_.precision(), device_);
    tape_->BeginForward(0);
    output = model_->forward(input, tape_.get());
  }
  const at::Tensor loss = Backward(output, target);
  optimizer_->step();
  return loss;
}

absl::StatusOr<at::Tensor> TrainingLoop::TrainPipelinedBatch(
    const at::Tensor& indices, const BatchPosition& position) {
  Clock::time_point start = Clock::now();
  const auto [input, target] = make_batch_(indices);
  const std::vector<int64_t> sizes =
      MicroBatchSizes(input.size(0), stage_.micro_batches);
  const std::vector<at::Tensor> inputs = input.split_with_sizes(sizes);
  const std::vector<at::Tensor> targets = target.split_with_sizes(sizes);
  std::vector<at::Tensor> outputs(sizes.size());
  optimizer_->zero_grad();
  busy_seconds_ += SecondsSince(start);
  BatchPosition micro = position;
  micro.micro_batches = static_cast<int>(sizes.size());
  micro.batch_rows = input.size(0);
  double loss = 0;
  for (const MicroBatchOp& op :
       StageSchedule(stage_.schedule, 0, stage_.stages, micro.micro_batches)) {
    micro.micro = op.micro;
    at::Tensor& output = outputs[static_cast<size_t>(op.micro)];
    if (op.forward) {
      start = Clock::now();
      {
        const ForwardPrecision precision(config_.precision(), device_);
        tape_->BeginForward(op.micro);
        output = model_->forward(inputs[static_cast<size_t>(op.micro)],
                                 tape_.get());
      }
      // Stages exchange fp32 activations whatever the arithmetic.
      output = output.to(at::kFloat);
      busy_seconds_ += SecondsSince(start);
      PNN_RETURN_IF_ERROR(stage_.peer->Send(
          output.detach(), targets[static_cast<size_t>(op.micro)], micro));
      continue;
    }
    PNN_ASSIGN_OR_RETURN(RemoteLoss remote, stage_.peer->Receive(op.micro));
    if (!remote.output_gradient.defined() ||
        !remote.output_gradient.sizes().equals(output.sizes())) {
      return absl::DataLossError(absl::StrCat(
          "the next pipeline stage returned a gradient of the wrong shape in "
          "epoch ",
          position.epoch, ", batch ", position.batch, ", micro-batch ",
          op.micro + 1));
    }
    start = Clock::now();
    tape_->Backward(op.micro, output, remote.output_gradient.to(device_),
                    /*input=*/at::Tensor());
    output = at::Tensor();  // its graph is spent: free the activations
    if (WeightGradientsPerMicroBatch(stage_.schedule)) {
      tape_->AccumulateWeightGradients();
    }
    busy_seconds_ += SecondsSince(start);
    loss += remote.loss;
  }
  start = Clock::now();
  tape_->AccumulateWeightGradients();
  optimizer_->step();
  busy_seconds_ += SecondsSince(start);
  return at::scalar_tensor(loss, at::kDouble);
}

at::Tensor TrainingLoop::Backward(const at::Tensor& output,
                                  const at::Tensor& target) {
  // The loss in fp32 whatever the forward pass's arithmetic.
  const at::Tensor scores = output.to(at::kFloat);
  const at::Tensor loss = loss_kind_ == LossKind::kMse
                              ? at::mse_loss(scores, target)
                              : at::cross_entropy_loss(scores, target);
  tape_->Backward(0, loss, /*root_gradient=*/at::Tensor(),
                  /*input=*/at::Tensor());
  tape_->AccumulateWeightGradients();
  return loss.detach();
}

void TrainingLoop::EmitCheckpoint(int epoch, int64_t batch, bool with_state) {
  pnn::v1::Checkpoint checkpoint = progress_.NewCheckpoint(epoch, batch);
  if (with_state) {
    pnn::v1::TrainingState* state = checkpoint.mutable_state();
    state->set_epochs_done(epoch);
    *state->mutable_weights() = ExportWeights(model_, segment_index_);
    state->set_optimizer_state(SaveOptimizerState(*optimizer_));
    for (const auto& done : progress_.epochs()) *state->add_epochs() = done;
    state->set_seconds(checkpoint.elapsed_seconds());
  } else {
    *checkpoint.mutable_weights() = ExportWeights(model_, segment_index_);
  }
  options_.on_checkpoint(std::move(checkpoint));
}

// at::set_num_threads sizes torch's own (OpenMP) pool but not OpenBLAS's,
// which Debian's libopenblas0-pthread starts with one thread per core in
// every process: without this, a worker told to use one thread still
// multiplies matrices on every core, and two workers on one machine fight
// over them. Looked up at run time: other BLAS builds lack the symbol.
void SetBlasThreads(int threads) {
  using SetThreadsFn = void (*)(int);
  static const SetThreadsFn set_threads = reinterpret_cast<SetThreadsFn>(
      dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set_threads != nullptr) set_threads(threads);
}

absl::Status ApplyThreads(const TrainOptions& options) {
  return SetTrainingThreads(options.threads);
}

absl::Status CheckSilTable(const pnn::v1::Tensor& table, const char* field,
                           int classes, const SampleShape& shape) {
  SampleShape expected = {classes};
  expected.insert(expected.end(), shape.begin(), shape.end());
  if (!std::equal(table.shape().begin(), table.shape().end(),
                  expected.begin(), expected.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: ", field, " must have shape [",
        absl::StrJoin(expected, ", "), "] (classes x the cut's shape), got [",
        absl::StrJoin(table.shape(), ", "), "]"));
  }
  return absl::OkStatus();
}

// The per-sample shape of the segment's output (the task's layers fit).
SampleShape OutputShape(const SegmentTask& task) {
  const auto shapes = InferShapes(TaskArchitecture(task), "segment task layers");
  return shapes.ok() && !shapes->empty() ? shapes->back().output
                                         : SampleShape{};
}

// ValidateSegmentTask, by section. Layers, shapes and the segment's place
// in the network.
absl::Status ValidateLayout(const SegmentTask& task) {
  const int layers = task.last_layer() - task.first_layer() + 1;
  if (task.first_layer() < 1 || layers < 1 || task.layers_size() != layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: layers ", task.first_layer(), "..", task.last_layer(),
        " need ", std::max(layers, 0), " layer specs, got ",
        task.layers_size()));
  }
  if (task.input_shape().empty() || task.input_shape_size() > 3) {
    return absl::InvalidArgumentError(
        "segment task: input_shape must be [features] or [channels, height, "
        "width]");
  }
  for (int64_t d : task.input_shape()) {
    if (d < 1 || d > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(
          "segment task: every input_shape dimension must be in [1, 2^24]");
    }
  }
  PNN_RETURN_IF_ERROR(
      InferShapes(TaskArchitecture(task), "segment task layers").status());
  if (task.segment_count() < 1 || task.segment_index() < 0 ||
      task.segment_index() >= task.segment_count()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: segment_index ", task.segment_index(),
        " is outside [0, segment_count = ", task.segment_count(), ")"));
  }
  return absl::OkStatus();
}

// The training settings, the class count, the input noise, the pipeline's
// neighbours and the checkpoints.
absl::Status ValidateSettings(const SegmentTask& task, const Dataset& data) {
  const auto& training = task.training();
  if (training.epochs() < 1 || training.batch_size() < 1 ||
      !(training.learning_rate() > 0) ||
      training.optimizer() == pnn::v1::OPTIMIZER_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "segment task: training must be resolved (epochs, batch_size, "
        "learning_rate and optimizer set)");
  }
  if (task.num_classes() != data.num_classes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "segment task expects ", task.num_classes(),
        " classes but the data set in ", data.directory, " has ",
        data.num_classes, "; do the coordinator and the worker see the same "
                          "data set?"));
  }
  if (!(task.input_noise_std() >= 0) || !std::isfinite(task.input_noise_std())) {
    return absl::InvalidArgumentError(
        "segment task: input_noise_std must be a finite value >= 0");
  }
  const bool last = task.segment_index() + 1 == task.segment_count();
  if (task.has_pipeline() &&
      last != task.pipeline().downstream_address().empty()) {
    return absl::InvalidArgumentError(
        "segment task: every pipeline stage but the last needs "
        "pipeline.downstream_address, and the last has none");
  }
  if (task.checkpoints_per_epoch() < 0) {
    return absl::InvalidArgumentError(
        "segment task: checkpoints_per_epoch must be >= 0");
  }
  return absl::OkStatus();
}

// What the segment reads: the images (the first segment), the previous
// stage's output (a pipeline stage), a SIL table or the upstream segments.
absl::Status ValidateInput(const SegmentTask& task, const Dataset& data) {
  if (task.segment_index() == 0) {
    if (task.input_case() != SegmentTask::INPUT_NOT_SET) {
      return absl::InvalidArgumentError(
          "segment task: the first segment reads the data set; it takes no "
          "input_sil or upstream");
    }
    const SampleShape image = {data.channels, data.rows, data.cols};
    const SampleShape input(task.input_shape().begin(),
                            task.input_shape().end());
    if (task.first_layer() != 1 ||
        (input != image && input != SampleShape{data.input_width()})) {
      return absl::FailedPreconditionError(absl::StrCat(
          "segment task: the first segment takes inputs of shape ",
          ShapeString(input), " at layer ", task.first_layer(),
          " but the data set's images are ", ShapeString(image)));
    }
  } else if (task.has_pipeline()) {
    if (task.input_case() != SegmentTask::INPUT_NOT_SET) {
      return absl::InvalidArgumentError(
          "segment task: a pipeline stage takes its input from the previous "
          "stage; it takes no input_sil or upstream");
    }
  } else if (task.input_case() == SegmentTask::kInputSil) {
    PNN_RETURN_IF_ERROR(CheckSilTable(
        task.input_sil(), "input_sil", task.num_classes(),
        SampleShape(task.input_shape().begin(), task.input_shape().end())));
  } else if (task.input_case() == SegmentTask::kUpstream) {
    if (task.upstream().segments_size() != task.segment_index() ||
        task.upstream().layers_size() != task.first_layer() - 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segment task: upstream must hold the ", task.segment_index(),
          " previous segments and layers 1..", task.first_layer() - 1,
          ", got ", task.upstream().segments_size(), " segments and ",
          task.upstream().layers_size(), " layers"));
    }
  } else {
    return absl::InvalidArgumentError(
        "segment task: a segment after a cut needs input_sil (or upstream "
        "for the previous-outputs mode)");
  }
  return absl::OkStatus();
}

// What the segment learns: the classes (the last segment), the next
// stage's gradient (a pipeline stage) or a target SIL table.
absl::Status ValidateTarget(const SegmentTask& task) {
  const SampleShape output = OutputShape(task);
  if (task.segment_index() + 1 == task.segment_count()) {
    if (task.has_target_sil()) {
      return absl::InvalidArgumentError(
          "segment task: the last segment learns the classes; it takes no "
          "target_sil");
    }
    if (output != SampleShape{task.num_classes()}) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segment task: the last segment must output ", task.num_classes(),
          " class scores, its layers output ", ShapeString(output)));
    }
  } else if (task.has_pipeline()) {
    if (task.has_target_sil()) {
      return absl::InvalidArgumentError(
          "segment task: a pipeline stage learns from the next stage's "
          "gradient; it takes no target_sil");
    }
  } else {
    if (!task.has_target_sil()) {
      return absl::InvalidArgumentError(
          "segment task: a segment that ends at a cut needs target_sil");
    }
    PNN_RETURN_IF_ERROR(CheckSilTable(task.target_sil(), "target_sil",
                                      task.num_classes(), output));
  }
  return absl::OkStatus();
}

// TrainSegment's checks of how it is asked to train, beyond the task.
absl::Status CheckSegmentRun(const SegmentTask& task,
                             const TrainOptions& options) {
  if (task.has_pipeline() &&
      (task.segment_index() != 0 ||
       (!options.remote_loss && options.pipeline_peer == nullptr))) {
    return absl::InvalidArgumentError(
        "segment task: TrainSegment trains only the first stage of a "
        "pipeline, with TrainOptions::pipeline_peer or remote_loss set");
  }
  if (task.has_resume() && task.resume().weights().segment_index() !=
                               task.segment_index()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: the resume state belongs to segment ",
        task.resume().weights().segment_index(), ", not ",
        task.segment_index()));
  }
  return absl::OkStatus();
}

// What a segment trains on besides the data set's labels and images; each
// is undefined when the task has none.
// All of them live on the training device, where batches are gathered.
struct SegmentInputs {
  at::Tensor input_sil;           // the input SIL table, by class
  at::Tensor precomputed_inputs;  // the upstream segments' outputs
  at::Tensor target_sil;          // the target SIL table, by class
};

// The outputs of the task's upstream segments on the training images. The
// upstream segments are frozen: their outputs are computed once, not per
// epoch.
absl::StatusOr<at::Tensor> UpstreamOutputs(const SegmentTask& task,
                                           const Dataset& data,
                                           c10::Device device) {
  const Architecture architecture = UpstreamArchitecture(task);
  PNN_ASSIGN_OR_RETURN(
      const std::vector<LayerShape> shapes,
      InferShapes(architecture, "segment task upstream layers"));
  const SampleShape input(task.input_shape().begin(), task.input_shape().end());
  if (shapes.empty() || shapes.back().output != input) {
    return absl::InvalidArgumentError(
        "segment task: upstream segments do not end where this segment "
        "starts");
  }
  const std::vector<pnn::v1::SegmentWeights> weights(
      task.upstream().segments().begin(), task.upstream().segments().end());
  PNN_ASSIGN_OR_RETURN(SegmentModel chain,
                       AssembleNetwork(weights, architecture));
  chain->to(device);
  chain->eval();
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> chunks;
  constexpr int64_t kChunk = 4096;
  for (int64_t begin = 0; begin < data.train.size(); begin += kChunk) {
    chunks.push_back(chain->forward(
        data.train.images.slice(0, begin, begin + kChunk).to(device)));
  }
  return at::cat(chunks);
}

absl::StatusOr<SegmentInputs> LoadSegmentInputs(const SegmentTask& task,
                                                const Dataset& data,
                                                c10::Device device) {
  SegmentInputs inputs;
  if (task.input_case() == SegmentTask::kInputSil) {
    PNN_ASSIGN_OR_RETURN(inputs.input_sil, TensorFromProto(task.input_sil()));
    inputs.input_sil = inputs.input_sil.to(device);
  } else if (task.input_case() == SegmentTask::kUpstream) {
    PNN_ASSIGN_OR_RETURN(inputs.precomputed_inputs,
                         UpstreamOutputs(task, data, device));
  }
  const bool last = task.segment_index() + 1 == task.segment_count();
  if (!last && !task.has_pipeline()) {
    PNN_ASSIGN_OR_RETURN(inputs.target_sil, TensorFromProto(task.target_sil()));
    inputs.target_sil = inputs.target_sil.to(device);
  }
  return inputs;
}

// The segment's batches: inputs from the input SIL table (+ Gaussian
// noise), the upstream outputs or the images; targets the classes (the
// last segment, or a pipeline's first stage, which hands them on to the
// last stage) or the target SIL table. What the batches read is copied to
// `device` once, here, so that a batch never crosses the bus (the images
// only when the segment reads them).
BatchFn SegmentBatches(const SegmentTask& task, const Dataset& data,
                       const SegmentInputs& inputs, c10::Device device) {
  const at::Generator noise_generator = SeededGenerator(
      task.seed() ^ (kNoiseStream * (task.segment_index() + 1)), device);
  const double noise = task.input_noise_std();
  const bool classes = task.segment_index() + 1 == task.segment_count() ||
                       task.has_pipeline();
  const at::Tensor labels = data.train.labels.to(device);
  const at::Tensor images =
      inputs.input_sil.defined() || inputs.precomputed_inputs.defined()
          ? at::Tensor()
          : data.train.images.to(device);
  return [=](const at::Tensor& indices) {
    const at::Tensor batch_labels = labels.index_select(0, indices);
    at::Tensor input;
    if (inputs.input_sil.defined()) {
      input = inputs.input_sil.index_select(0, batch_labels);
      if (noise > 0) {
        input = input + at::empty(input.sizes(), input.options())
                            .normal_(0.0, noise, noise_generator);
      }
    } else if (inputs.precomputed_inputs.defined()) {
      input = inputs.precomputed_inputs.index_select(0, indices);
    } else {
      input = images.index_select(0, indices);
    }
    at::Tensor target = classes
                            ? batch_labels
                            : inputs.target_sil.index_select(0, batch_labels);
    return std::make_pair(input, target);
  };
}

// TrainSegment once the task is checked: builds the segment, trains it and
// reports its weights, epochs and cost.
absl::StatusOr<pnn::v1::SegmentResult> TrainCheckedSegment(
    const SegmentTask& task, const Dataset& data, c10::Device device,
    const TrainOptions& options) {
  const Architecture architecture = TaskArchitecture(task);
  SegmentModel model(architecture);
  InitializeWeights(model, task.seed());
  PNN_ASSIGN_OR_RETURN(const SegmentInputs inputs,
                       LoadSegmentInputs(task, data, device));
  const bool last = task.segment_index() + 1 == task.segment_count();
  pnn::v1::SegmentResult result;
  pnn::v1::TrainingCost* cost = result.mutable_cost();
  *cost = AnalyticTrainingCost(architecture, task.training());
  TrainingLoop loop(model, task.segment_index(), data.train.size(),
                    SegmentBatches(task, data, inputs, device),
                    last ? LossKind::kCrossEntropy : LossKind::kMse,
                    task.training(), task.seed(), device, options);
  std::optional<RemoteLossPeer> blocking;
  if (task.has_pipeline()) {
    FirstStage stage;
    stage.peer = options.pipeline_peer;
    if (stage.peer == nullptr) {
      stage.peer = &blocking.emplace(options.remote_loss);
    }
    stage.micro_batches = std::max(1, task.pipeline().micro_batches());
    stage.schedule = task.pipeline().schedule();
    stage.stages = task.segment_count();
    loop.SetFirstStage(stage);
  }
  PNN_ASSIGN_OR_RETURN(const std::vector<EpochMetrics> epochs, loop.Run(cost));
  if (task.has_pipeline()) {
    FillPipelineCost(task, loop.busy_seconds(), cost);
  }
  result.set_segment_index(task.segment_index());
  *result.mutable_weights() = ExportWeights(model, task.segment_index());
  for (const auto& epoch : epochs) *result.add_epochs() = epoch;
  // What this segment actually reads: labels only, unless it takes images.
  const bool reads_images = task.input_case() != SegmentTask::kInputSil;
  cost->set_dataset_bytes(
      data.train.labels.nbytes() +
      (reads_images ? data.train.images.nbytes() : 0) +
      (inputs.precomputed_inputs.defined() ? inputs.precomputed_inputs.nbytes()
                                           : 0));
  return result;
}

}  // namespace

std::unique_ptr<PipelinePeer> BlockingPipelinePeer(RemoteLossFn loss) {
  return std::make_unique<RemoteLossPeer>(std::move(loss));
}

absl::Status SetTrainingThreads(int threads) {
  if (threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be >= 0, got ", threads));
  }
  if (threads == 0) return absl::OkStatus();
  if (at::get_num_threads() != threads) at::set_num_threads(threads);
  SetBlasThreads(threads);
  return absl::OkStatus();
}

absl::StatusOr<c10::Device> ResolveDevice(const std::string& device) {
  if (device.empty() || device == "cpu") return c10::Device(c10::kCPU);
  int index = -1;
  if (!IsValidDeviceName(device, &index)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"", device,
        "\""));
  }
  if (!torch::cuda::is_available()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device \"", device,
        "\" requested but CUDA is not available here (this libtorch build "
        "or machine has no CUDA device); use \"cpu\" or run on a CUDA "
        "worker with a CUDA build of libtorch"));
  }
  if (index >= static_cast<int>(torch::cuda::device_count())) {
    return absl::FailedPreconditionError(
        absl::StrCat("device \"", device, "\" requested but only ",
                     torch::cuda::device_count(), " CUDA devices exist"));
  }
  return c10::Device(c10::kCUDA,
                     static_cast<c10::DeviceIndex>(std::max(index, 0)));
}

absl::Status ValidateSegmentTask(const SegmentTask& task, const Dataset& data) {
  PNN_RETURN_IF_ERROR(ValidateLayout(task));
  PNN_RETURN_IF_ERROR(ValidateSettings(task, data));
  PNN_RETURN_IF_ERROR(ValidateInput(task, data));
  return ValidateTarget(task);
}

absl::StatusOr<pnn::v1::SegmentResult> TrainSegment(
    const SegmentTask& task, const Dataset& data, const TrainOptions& options) {
  PNN_RETURN_IF_ERROR(ValidateSegmentTask(task, data));
  PNN_RETURN_IF_ERROR(ApplyThreads(options));
  PNN_RETURN_IF_ERROR(CheckSegmentRun(task, options));
  TrainOptions segment_options = options;
  segment_options.checkpoints_per_epoch = task.checkpoints_per_epoch();
  segment_options.resume_checkpoints = task.resume_checkpoints();
  segment_options.resume = task.has_resume() ? &task.resume() : nullptr;
  PNN_ASSIGN_OR_RETURN(const c10::Device device, ResolveDevice(task.device().empty() ? options.device : task.device()));
  return Guarded<pnn::v1::SegmentResult>("training segment", [&] {
    return TrainCheckedSegment(task, data, device, segment_options);
  });
}

absl::StatusOr<NetworkTrainingResult> TrainNetwork(
    SegmentModel& network, const Split& train, const TrainingConfig& config,
    uint64_t seed, const TrainOptions& options) {
  PNN_RETURN_IF_ERROR(ApplyThreads(options));
  PNN_ASSIGN_OR_RETURN(const c10::Device device, ResolveDevice(options.device));
  const int64_t inputs = Elements(network->architecture().input_shape);
  if (!train.images.defined() || inputs != train.images.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "network takes ", ShapeString(network->architecture().input_shape),
        " inputs, the images have ",
        train.images.defined() ? train.images.size(1) : 0, " pixels"));
  }
  return Guarded<NetworkTrainingResult>(
      "training network", [&]() -> absl::StatusOr<NetworkTrainingResult> {
        // The split on the device once; batches are gathered there.
        const at::Tensor images = train.images.to(device);
        const at::Tensor labels = train.labels.to(device);
        BatchFn make_batch = [&](const at::Tensor& indices) {
          return std::make_pair(images.index_select(0, indices),
                                labels.index_select(0, indices));
        };
        NetworkTrainingResult result;
        result.cost = AnalyticTrainingCost(network->architecture(), config);
        TrainingLoop loop(network, /*segment_index=*/0, train.size(),
                          make_batch, LossKind::kCrossEntropy, config, seed,
                          device, options);
        PNN_ASSIGN_OR_RETURN(result.epochs, loop.Run(&result.cost));
        result.cost.set_dataset_bytes(train.images.nbytes() +
                                      train.labels.nbytes());
        return result;
      });
}

absl::StatusOr<pnn::v1::TestResult> Evaluate(SegmentModel& network,
                                             const Split& test, int num_classes,
                                             const std::string& device_name) {
  PNN_ASSIGN_OR_RETURN(const c10::Device device, ResolveDevice(device_name));
  if (test.size() == 0) {
    return absl::FailedPreconditionError("the test split is empty");
  }
  return Guarded<pnn::v1::TestResult>("evaluating", [&]()
      -> absl::StatusOr<pnn::v1::TestResult> {
    at::NoGradGuard no_grad;
    const bool was_training = network->is_training();
    network->eval();
    network->to(device);
    constexpr int64_t kBatch = 2048;
    // Sums stay on the device and are read once, at the end.
    at::Tensor loss_sum =
        at::zeros({}, at::TensorOptions(device).dtype(at::kDouble));
    at::Tensor correct_per_class =
        at::zeros({num_classes}, at::TensorOptions(device).dtype(at::kLong));
    at::Tensor samples_per_class = at::zeros_like(correct_per_class);
    for (int64_t begin = 0; begin < test.size(); begin += kBatch) {
      const at::Tensor images =
          test.images.slice(0, begin, begin + kBatch).to(device);
      const at::Tensor labels =
          test.labels.slice(0, begin, begin + kBatch).to(device);
      const at::Tensor logits = network->forward(images).to(at::kFloat);
      loss_sum += at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum)
                      .to(at::kDouble);
      const at::Tensor hits = logits.argmax(1).eq(labels);
      samples_per_class += at::bincount(labels, {}, num_classes);
      correct_per_class +=
          at::bincount(labels.masked_select(hits), {}, num_classes);
    }
    if (was_training) network->train();
    correct_per_class = correct_per_class.to(at::kCPU);
    samples_per_class = samples_per_class.to(at::kCPU);
    pnn::v1::TestResult result;
    const int64_t correct = correct_per_class.sum().item<int64_t>();
    result.set_samples(test.size());
    result.set_accuracy(static_cast<double>(correct) /
                        static_cast<double>(test.size()));
    result.set_loss(loss_sum.item<double>() / static_cast<double>(test.size()));
    for (int c = 0; c < num_classes; ++c) {
      const int64_t n = samples_per_class[c].item<int64_t>();
      if (n == 0) continue;
      auto* per_class = result.add_per_class();
      per_class->set_label(c);
      per_class->set_samples(n);
      per_class->set_accuracy(
          static_cast<double>(correct_per_class[c].item<int64_t>()) / n);
    }
    return result;
  });
}

}  // namespace pnn
