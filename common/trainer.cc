#include "common/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>
#include <torch/serialize/archive.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/accounting.h"
#include "common/job_spec.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "common/training_internal.h"

namespace pnn {
namespace {

using internal::Guarded;
using internal::MakeOptimizer;

using pnn::v1::EpochMetrics;
using pnn::v1::SegmentTask;
using pnn::v1::TrainingConfig;
using Clock = std::chrono::steady_clock;

// Independent random streams derived from the job seed.
constexpr uint64_t kShuffleStream = 0x7368756666ULL;
constexpr uint64_t kNoiseStream = 0x6e6f697365ULL;

enum class LossKind { kMse, kCrossEntropy };

// Builds (input, target) on the CPU for the sample indices of one batch.
using BatchFn =
    std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&)>;

struct LoopResult {
  std::vector<EpochMetrics> epochs;
  double seconds = 0;
  int64_t samples_seen = 0;  // in this run (not counting a resumed part)
  int64_t peak_rss_growth_bytes = 0;
  double cpu_seconds = 0;
  double resumed_seconds = 0;  // training time before a resume
};

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

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

// True when batch `batch` (1-based) of `batches` ends one of `per_epoch`
// evenly spaced evaluation points; the last batch always does.
bool IsCheckpointBatch(int64_t batch, int64_t batches, int per_epoch) {
  if (per_epoch <= 0) return false;
  return (batch * per_epoch) / batches > ((batch - 1) * per_epoch) / batches;
}

absl::StatusOr<LoopResult> RunTrainingLoop(
    MlpSegment& model, int segment_index, int64_t samples,
    const BatchFn& make_batch, LossKind loss_kind, const TrainingConfig& config,
    uint64_t seed, c10::Device device, const TrainOptions& options) {
  if (samples < 1) {
    return absl::FailedPreconditionError("no training samples");
  }
  model->to(device);
  model->train();
  auto optimizer = MakeOptimizer(model, config);
  auto shuffle_generator = at::detail::createCPUGenerator(seed ^ kShuffleStream);
  const int64_t batch_size = config.batch_size();
  const int64_t batches = (samples + batch_size - 1) / batch_size;

  LoopResult result;
  int first_epoch = 1;
  double resumed_seconds = 0;
  if (options.resume != nullptr) {
    const pnn::v1::TrainingState& state = *options.resume;
    if (state.epochs_done() < 0 || state.epochs_done() > config.epochs()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "resume state: epochs_done ", state.epochs_done(),
          " is outside [0, ", config.epochs(), "]"));
    }
    PNN_RETURN_IF_ERROR(ImportWeights(state.weights(), model));
    if (!state.optimizer_state().empty()) {
      LoadOptimizerState(state.optimizer_state(), *optimizer, device);
    }
    // The same shuffles as an uninterrupted run: replay the permutations of
    // the epochs already trained.
    for (int epoch = 1; epoch <= state.epochs_done(); ++epoch) {
      (void)at::randperm(samples, shuffle_generator, at::kLong);
    }
    for (const auto& epoch : state.epochs()) result.epochs.push_back(epoch);
    first_epoch = state.epochs_done() + 1;
    resumed_seconds = state.seconds();
  }

  PeakRssMeter memory;
  memory.Start();
  const auto start = Clock::now();
  const double cpu_start = ProcessCpuSeconds();
  auto emit_checkpoint = [&](int epoch, int64_t batch, bool with_state) {
    pnn::v1::Checkpoint checkpoint;
    checkpoint.set_epoch(epoch);
    checkpoint.set_batches_done(batch);
    checkpoint.set_epochs_done((epoch - 1) + static_cast<double>(batch) /
                                                 static_cast<double>(batches));
    checkpoint.set_elapsed_seconds(resumed_seconds + SecondsSince(start));
    checkpoint.set_cpu_seconds(ProcessCpuSeconds() - cpu_start);
    if (with_state) {
      pnn::v1::TrainingState* state = checkpoint.mutable_state();
      state->set_epochs_done(epoch);
      *state->mutable_weights() = ExportWeights(model, segment_index);
      state->set_optimizer_state(SaveOptimizerState(*optimizer));
      for (const auto& done : result.epochs) *state->add_epochs() = done;
      state->set_seconds(checkpoint.elapsed_seconds());
    } else {
      *checkpoint.mutable_weights() = ExportWeights(model, segment_index);
    }
    options.on_checkpoint(std::move(checkpoint));
  };
  for (int epoch = first_epoch; epoch <= config.epochs(); ++epoch) {
    const auto epoch_start = Clock::now();
    const at::Tensor order = at::randperm(samples, shuffle_generator, at::kLong);
    double loss_sum = 0;
    int64_t seen = 0;
    for (int64_t batch = 0; batch < batches; ++batch) {
      if (options.should_stop && options.should_stop()) {
        return absl::CancelledError(absl::StrCat(
            "training cancelled in epoch ", epoch, ", batch ", batch + 1));
      }
      BatchPosition position;
      position.epoch = epoch;
      position.batch = batch + 1;
      position.batches_per_epoch = batches;
      position.checkpoint = options.on_checkpoint != nullptr &&
                            IsCheckpointBatch(batch + 1, batches,
                                              options.checkpoints_per_epoch);
      const int64_t begin = batch * batch_size;
      const at::Tensor indices =
          order.slice(0, begin, std::min(samples, begin + batch_size));
      auto [input, target] = make_batch(indices);
      input = input.to(device);
      target = target.to(device);
      optimizer->zero_grad();
      const at::Tensor output = model->forward(input);
      double loss_value = 0;
      if (options.remote_loss) {
        PNN_ASSIGN_OR_RETURN(
            RemoteLoss remote,
            options.remote_loss(output.detach(), target, position));
        if (!remote.output_gradient.defined() ||
            !remote.output_gradient.sizes().equals(output.sizes())) {
          return absl::DataLossError(absl::StrCat(
              "the next pipeline stage returned a gradient of the wrong "
              "shape in epoch ", epoch, ", batch ", batch + 1));
        }
        output.backward(remote.output_gradient.to(device));
        loss_value = remote.loss;
      } else {
        const at::Tensor loss = loss_kind == LossKind::kMse
                                    ? at::mse_loss(output, target)
                                    : at::cross_entropy_loss(output, target);
        loss.backward();
        loss_value = loss.item<double>();
      }
      optimizer->step();
      if (!std::isfinite(loss_value)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "training diverged: loss is ", loss_value, " in epoch ", epoch,
            ", batch ", batch + 1,
            "; lower the learning rate or the SIL kappa"));
      }
      loss_sum += loss_value * static_cast<double>(indices.size(0));
      seen += indices.size(0);
      if (options.on_batches && options.batch_report_interval > 0 &&
          ((batch + 1) % options.batch_report_interval == 0 ||
           batch + 1 == batches)) {
        options.on_batches(epoch, batch + 1, batches, loss_sum / seen);
      }
      // The epoch's last evaluation point waits for its metrics below, so
      // that a resumable state includes them.
      if (position.checkpoint && batch + 1 < batches) {
        emit_checkpoint(epoch, batch + 1, /*with_state=*/false);
      }
    }
    EpochMetrics metrics;
    metrics.set_epoch(epoch);
    metrics.set_train_loss(loss_sum / static_cast<double>(seen));
    metrics.set_seconds(SecondsSince(epoch_start));
    metrics.set_samples_per_second(static_cast<double>(seen) /
                                   std::max(metrics.seconds(), 1e-9));
    metrics.set_peak_rss_growth_bytes(memory.PeakGrowthBytes());
    result.samples_seen += seen;
    result.epochs.push_back(metrics);
    if (options.on_epoch) options.on_epoch(metrics, model);
    if (options.on_checkpoint &&
        (options.resume_checkpoints || options.checkpoints_per_epoch > 0)) {
      // One message serves both: the state's weights are the evaluation
      // point's weights.
      emit_checkpoint(epoch, batches, options.resume_checkpoints);
    }
  }
  result.seconds = resumed_seconds + SecondsSince(start);
  result.resumed_seconds = resumed_seconds;
  result.cpu_seconds = ProcessCpuSeconds() - cpu_start;
  result.peak_rss_growth_bytes = memory.PeakGrowthBytes();
  return result;
}

void FillMeasuredCost(const LoopResult& loop, pnn::v1::TrainingCost* cost) {
  cost->set_wall_seconds(loop.seconds);
  cost->set_samples_per_second(
      static_cast<double>(loop.samples_seen) /
      std::max(loop.seconds - loop.resumed_seconds, 1e-9));
  cost->set_peak_rss_growth_bytes(loop.peak_rss_growth_bytes);
  cost->set_cpu_seconds(loop.cpu_seconds);
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
                           int classes, int width) {
  if (table.shape_size() != 2 || table.shape(0) != classes ||
      table.shape(1) != width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: ", field, " must have shape [", classes, ", ", width,
        "] (classes x cut width), got ", table.shape_size(), " dimensions"));
  }
  return absl::OkStatus();
}

}  // namespace

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
  const int layers = task.last_layer() - task.first_layer() + 1;
  if (task.first_layer() < 1 || layers < 1 ||
      task.widths_size() != layers + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: layers ", task.first_layer(), "..", task.last_layer(),
        " need ", layers + 1, " widths, got ", task.widths_size()));
  }
  for (int width : task.widths()) {
    if (width < 1) {
      return absl::InvalidArgumentError(
          "segment task: every width must be positive");
    }
  }
  if (task.segment_count() < 1 || task.segment_index() < 0 ||
      task.segment_index() >= task.segment_count()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: segment_index ", task.segment_index(),
        " is outside [0, segment_count = ", task.segment_count(), ")"));
  }
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
  const bool first = task.segment_index() == 0;
  const bool last = task.segment_index() + 1 == task.segment_count();
  const bool pipeline = task.has_pipeline();
  if (pipeline && last != task.pipeline().downstream_address().empty()) {
    return absl::InvalidArgumentError(
        "segment task: every pipeline stage but the last needs "
        "pipeline.downstream_address, and the last has none");
  }
  if (task.checkpoints_per_epoch() < 0) {
    return absl::InvalidArgumentError(
        "segment task: checkpoints_per_epoch must be >= 0");
  }
  if (first) {
    if (task.input_case() != SegmentTask::INPUT_NOT_SET) {
      return absl::InvalidArgumentError(
          "segment task: the first segment reads the data set; it takes no "
          "input_sil or upstream");
    }
    if (task.first_layer() != 1 || task.widths(0) != data.input_width()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "segment task: the first segment takes ", task.widths(0),
          " inputs at layer ", task.first_layer(), " but the data set's images "
          "have ", data.input_width(), " pixels"));
    }
  } else if (pipeline) {
    if (task.input_case() != SegmentTask::INPUT_NOT_SET) {
      return absl::InvalidArgumentError(
          "segment task: a pipeline stage takes its input from the previous "
          "stage; it takes no input_sil or upstream");
    }
  } else if (task.input_case() == SegmentTask::kInputSil) {
    PNN_RETURN_IF_ERROR(CheckSilTable(task.input_sil(), "input_sil",
                                      task.num_classes(), task.widths(0)));
  } else if (task.input_case() == SegmentTask::kUpstream) {
    if (task.upstream().segments_size() != task.segment_index()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segment task: upstream must hold the ", task.segment_index(),
          " previous segments, got ", task.upstream().segments_size()));
    }
  } else {
    return absl::InvalidArgumentError(
        "segment task: a segment after a cut needs input_sil (or upstream "
        "for the previous-outputs mode)");
  }
  if (last) {
    if (task.has_target_sil()) {
      return absl::InvalidArgumentError(
          "segment task: the last segment learns the classes; it takes no "
          "target_sil");
    }
    if (task.widths(task.widths_size() - 1) != task.num_classes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segment task: the last segment must output ", task.num_classes(),
          " class scores, its widths end with ",
          task.widths(task.widths_size() - 1)));
    }
  } else if (pipeline) {
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
                                      task.num_classes(),
                                      task.widths(task.widths_size() - 1)));
  }
  return absl::OkStatus();
}

absl::StatusOr<pnn::v1::SegmentResult> TrainSegment(
    const SegmentTask& task, const Dataset& data, const TrainOptions& options) {
  PNN_RETURN_IF_ERROR(ValidateSegmentTask(task, data));
  PNN_RETURN_IF_ERROR(ApplyThreads(options));
  if (task.has_pipeline() &&
      (task.segment_index() != 0 || !options.remote_loss)) {
    return absl::InvalidArgumentError(
        "segment task: TrainSegment trains only the first stage of a "
        "pipeline, with TrainOptions::remote_loss set");
  }
  if (task.has_resume() && task.resume().weights().segment_index() !=
                               task.segment_index()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment task: the resume state belongs to segment ",
        task.resume().weights().segment_index(), ", not ",
        task.segment_index()));
  }
  TrainOptions segment_options = options;
  segment_options.checkpoints_per_epoch = task.checkpoints_per_epoch();
  segment_options.resume_checkpoints = task.resume_checkpoints();
  segment_options.resume = task.has_resume() ? &task.resume() : nullptr;
  PNN_ASSIGN_OR_RETURN(const c10::Device device, ResolveDevice(task.device().empty() ? options.device : task.device()));
  return Guarded<pnn::v1::SegmentResult>("training segment", [&]()
      -> absl::StatusOr<pnn::v1::SegmentResult> {
    const std::vector<int> widths(task.widths().begin(), task.widths().end());
    MlpSegment model(task.first_layer(), widths, task.activation());
    InitializeWeights(model, task.seed());

    const at::Tensor labels = data.train.labels;
    const bool last = task.segment_index() + 1 == task.segment_count();
    at::Tensor input_sil;
    at::Tensor precomputed_inputs;
    at::Tensor target_sil;
    if (task.input_case() == SegmentTask::kInputSil) {
      PNN_ASSIGN_OR_RETURN(input_sil, TensorFromProto(task.input_sil()));
    } else if (task.input_case() == SegmentTask::kUpstream) {
      // The upstream segments are frozen: their outputs on the training
      // set are computed once, not per epoch.
      std::vector<MlpSegment> upstream;
      for (const auto& weights : task.upstream().segments()) {
        PNN_ASSIGN_OR_RETURN(MlpSegment part,
                             ModelFromWeights(weights, task.activation()));
        upstream.push_back(part);
      }
      PNN_ASSIGN_OR_RETURN(MlpSegment chain, JoinSegments(upstream));
      if (chain->last_layer() + 1 != task.first_layer() ||
          chain->widths().back() != task.widths(0)) {
        return absl::InvalidArgumentError(
            "segment task: upstream segments do not end where this segment "
            "starts");
      }
      chain->to(device);
      chain->eval();
      at::NoGradGuard no_grad;
      std::vector<at::Tensor> chunks;
      constexpr int64_t kChunk = 4096;
      for (int64_t begin = 0; begin < data.train.size(); begin += kChunk) {
        chunks.push_back(
            chain->forward(data.train.images.slice(0, begin, begin + kChunk)
                               .to(device))
                .to(at::kCPU));
      }
      precomputed_inputs = at::cat(chunks);
    }
    if (!last && !task.has_pipeline()) {
      PNN_ASSIGN_OR_RETURN(target_sil, TensorFromProto(task.target_sil()));
    }
    auto noise_generator = at::detail::createCPUGenerator(
        task.seed() ^ (kNoiseStream * (task.segment_index() + 1)));
    const double noise = task.input_noise_std();

    BatchFn make_batch = [&](const at::Tensor& indices) {
      const at::Tensor batch_labels = labels.index_select(0, indices);
      at::Tensor input;
      if (input_sil.defined()) {
        input = input_sil.index_select(0, batch_labels);
        if (noise > 0) {
          input = input + at::empty(input.sizes(), at::kFloat)
                              .normal_(0.0, noise, noise_generator);
        }
      } else if (precomputed_inputs.defined()) {
        input = precomputed_inputs.index_select(0, indices);
      } else {
        input = data.train.images.index_select(0, indices);
      }
      // A pipeline's first stage hands the classes on to the last stage.
      at::Tensor target = last || task.has_pipeline()
                              ? batch_labels
                              : target_sil.index_select(0, batch_labels);
      return std::make_pair(input, target);
    };
    PNN_ASSIGN_OR_RETURN(
        LoopResult loop,
        RunTrainingLoop(model, task.segment_index(), data.train.size(),
                        make_batch,
                        last ? LossKind::kCrossEntropy : LossKind::kMse,
                        task.training(), task.seed(), device, segment_options));

    pnn::v1::SegmentResult result;
    result.set_segment_index(task.segment_index());
    *result.mutable_weights() = ExportWeights(model, task.segment_index());
    for (const auto& epoch : loop.epochs) *result.add_epochs() = epoch;
    *result.mutable_cost() = AnalyticTrainingCost(
        widths, /*leading_activation=*/task.first_layer() > 1, task.training());
    FillMeasuredCost(loop, result.mutable_cost());
    // What this segment actually reads: labels only, unless it takes images.
    const bool reads_images = task.input_case() != SegmentTask::kInputSil;
    result.mutable_cost()->set_dataset_bytes(
        labels.nbytes() + (reads_images ? data.train.images.nbytes() : 0) +
        (precomputed_inputs.defined() ? precomputed_inputs.nbytes() : 0));
    return result;
  });
}

absl::StatusOr<NetworkTrainingResult> TrainNetwork(
    MlpSegment& network, const Split& train, const TrainingConfig& config,
    uint64_t seed, const TrainOptions& options) {
  PNN_RETURN_IF_ERROR(ApplyThreads(options));
  PNN_ASSIGN_OR_RETURN(const c10::Device device, ResolveDevice(options.device));
  if (network->widths().front() != train.images.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "network takes ", network->widths().front(), " inputs, the images have ",
        train.images.size(1), " pixels"));
  }
  return Guarded<NetworkTrainingResult>("training network", [&]()
      -> absl::StatusOr<NetworkTrainingResult> {
    BatchFn make_batch = [&](const at::Tensor& indices) {
      return std::make_pair(train.images.index_select(0, indices),
                            train.labels.index_select(0, indices));
    };
    PNN_ASSIGN_OR_RETURN(
        LoopResult loop,
        RunTrainingLoop(network, /*segment_index=*/0, train.size(),
                        make_batch, LossKind::kCrossEntropy, config, seed,
                        device, options));
    NetworkTrainingResult result;
    result.epochs = loop.epochs;
    result.cost = AnalyticTrainingCost(network->widths(),
                                       network->first_layer() > 1, config);
    FillMeasuredCost(loop, &result.cost);
    result.cost.set_dataset_bytes(train.images.nbytes() + train.labels.nbytes());
    return result;
  });
}

absl::StatusOr<pnn::v1::TestResult> Evaluate(MlpSegment& network,
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
    double loss_sum = 0;
    at::Tensor correct_per_class = at::zeros({num_classes}, at::kLong);
    at::Tensor samples_per_class = at::zeros({num_classes}, at::kLong);
    for (int64_t begin = 0; begin < test.size(); begin += kBatch) {
      const at::Tensor images = test.images.slice(0, begin, begin + kBatch);
      const at::Tensor labels = test.labels.slice(0, begin, begin + kBatch);
      const at::Tensor logits = network->forward(images.to(device)).to(at::kCPU);
      loss_sum += at::cross_entropy_loss(logits, labels, {},
                                         at::Reduction::Sum)
                      .item<double>();
      const at::Tensor hits = logits.argmax(1).eq(labels);
      samples_per_class += at::bincount(labels, {}, num_classes);
      correct_per_class +=
          at::bincount(labels.masked_select(hits), {}, num_classes);
    }
    if (was_training) network->train();
    pnn::v1::TestResult result;
    const int64_t correct = correct_per_class.sum().item<int64_t>();
    result.set_samples(test.size());
    result.set_accuracy(static_cast<double>(correct) /
                        static_cast<double>(test.size()));
    result.set_loss(loss_sum / static_cast<double>(test.size()));
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
