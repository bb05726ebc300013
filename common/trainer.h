// Training and evaluation: one segment from its SegmentTask, a whole
// network end to end (the conventional baseline and the recovery epochs),
// and the test pass.
//
// Functions run on the calling thread and block until done; give each
// concurrent call its own modules. torch's intra-op thread count is
// process-wide: TrainOptions::threads sets it for the whole process.
// libtorch exceptions never escape: they come back as absl::Status.
#ifndef PNN_COMMON_TRAINER_H_
#define PNN_COMMON_TRAINER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dataset.h"
#include "common/model.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// Where a batch falls in training; 1-based.
struct BatchPosition {
  int epoch = 1;
  int64_t batch = 1;
  int64_t batches_per_epoch = 1;
  // The batch ends at an evaluation point (TrainOptions::
  // checkpoints_per_epoch): a checkpoint follows it.
  bool checkpoint = false;
  // Model-parallel: this micro-batch (0-based) of the batch's
  // micro_batches, and the rows of the whole batch (0: the micro-batch is
  // the whole batch), whose mean loss the pipeline minimises.
  int micro = 0;
  int micro_batches = 1;
  int64_t batch_rows = 0;
};

// What the rest of a model-parallel pipeline returns for one micro-batch.
struct RemoteLoss {
  at::Tensor output_gradient;  // d loss / d (this stage's output)
  // The micro-batch's share of the batch's mean loss (the batch's mean
  // loss when the micro-batch is the whole batch).
  double loss = 0;
};

// The rest of a model-parallel pipeline seen from one stage, a micro-batch
// at a time: Send hands a micro-batch's output (detached) on and may
// return before the next stage has it; Receive waits for the gradient of
// a micro-batch sent earlier in the same batch. Several micro-batches may
// be in flight. Used by one training thread.
class PipelinePeer {
 public:
  virtual ~PipelinePeer() = default;
  virtual absl::Status Send(const at::Tensor& output, const at::Tensor& labels,
                            const BatchPosition& position) = 0;
  virtual absl::StatusOr<RemoteLoss> Receive(int micro) = 0;
};

// The rest of a pipeline as one blocking call per micro-batch: takes a
// stage's output (detached), the micro-batch's classes and its position,
// and returns the gradient of the loss with respect to that output.
using RemoteLossFn = std::function<absl::StatusOr<RemoteLoss>(
    const at::Tensor& output, const at::Tensor& labels,
    const BatchPosition& position)>;

// A PipelinePeer over a RemoteLossFn: Send keeps the output, Receive makes
// the call with it (so nothing overlaps; for in-process pipelines).
std::unique_ptr<PipelinePeer> BlockingPipelinePeer(RemoteLossFn loss);

struct TrainOptions {
  // "cpu", "cuda" or "cuda:N". Asking for CUDA where there is none is a
  // FAILED_PRECONDITION error, never a silent fallback.
  std::string device = "cpu";
  // Intra-op threads for torch (0: leave the process setting alone).
  int threads = 0;
  // After every epoch, on the training thread, with the live model (copy
  // what you need with ExportWeights).
  std::function<void(const pnn::v1::EpochMetrics&, const SegmentModel&)>
      on_epoch;
  // Every `batch_report_interval` batches: epoch (1-based), batches done in
  // the epoch, batches per epoch, mean loss so far in the epoch.
  std::function<void(int, int64_t, int64_t, double)> on_batches;
  int64_t batch_report_interval = 50;
  // Polled between batches; returning true ends training with CANCELLED.
  std::function<bool()> should_stop;

  // Checkpoints, on the training thread: `checkpoints_per_epoch` evenly
  // spaced evaluation points per epoch (weights only; the last one is the
  // epoch's end), and with `resume_checkpoints` the resumable state
  // (weights + optimizer) at every epoch's end. TrainSegment takes both
  // settings from its task.
  int checkpoints_per_epoch = 0;
  bool resume_checkpoints = false;
  std::function<void(pnn::v1::Checkpoint)> on_checkpoint;
  // Continue from this state instead of epoch 0 (not owned). The shuffle
  // order continues as if training had not stopped; the SIL input noise
  // stream restarts from its seed.
  const pnn::v1::TrainingState* resume = nullptr;
  // Model-parallel first stage: instead of a local loss, the model's output
  // and the batch's target go to the rest of the pipeline, which returns
  // the gradient of the loss with respect to that output. Either
  // remote_loss (one call per batch, which blocks: one micro-batch) or
  // pipeline_peer (not owned; the task's pipeline.micro_batches and
  // schedule) is set.
  RemoteLossFn remote_loss;
  PipelinePeer* pipeline_peer = nullptr;
};

// Sets the process-wide intra-op thread count of torch and of OpenBLAS
// (which at::set_num_threads alone leaves at one thread per core); 0 leaves
// both alone.
absl::Status SetTrainingThreads(int threads);

// Resolves a device string against what this process can use.
absl::StatusOr<c10::Device> ResolveDevice(const std::string& device);

// Checks that `task` is well-formed and fits `data` (shapes, SIL tables,
// class count, resolved hyperparameters) before anything is allocated.
absl::Status ValidateSegmentTask(const pnn::v1::SegmentTask& task,
                                 const Dataset& data);

// Trains one segment as `task` describes:
//  - first segment: training images -> target SIL of the class (MSE);
//  - middle segment: input SIL (+ Gaussian noise) -> target SIL (MSE);
//  - last segment: input SIL (+ noise) -> class (cross-entropy);
//  - with `upstream` set instead of `input_sil`, the input is the real
//    output of the given previous segments on the training images.
// Only the labels of `data` are read by SIL-input segments. Deterministic
// for a given task and thread count.
// A model-parallel task (task.pipeline set) trains the first stage: images
// -> this stage's output, with options.pipeline_peer (or remote_loss)
// supplying the gradient; each batch is split into the task's
// pipeline.micro_batches, run in its schedule's order
// (common/pipeline_schedule.h), and the optimizer steps once per batch on
// the gradients summed over its micro-batches. The result's cost has the
// stage's idle fraction. Later stages are trained by PipelineStageTrainer
// (common/pipeline.h).
absl::StatusOr<pnn::v1::SegmentResult> TrainSegment(
    const pnn::v1::SegmentTask& task, const Dataset& data,
    const TrainOptions& options);

struct NetworkTrainingResult {
  std::vector<pnn::v1::EpochMetrics> epochs;
  pnn::v1::TrainingCost cost;
};

// Trains `network` end to end (images -> classes, cross-entropy) for
// config.epochs epochs, in place. Used for conventional training and for
// the recovery epochs of a joined network. Shuffles with the same stream
// as TrainSegment, so both see the data in the same order.
absl::StatusOr<NetworkTrainingResult> TrainNetwork(
    SegmentModel& network, const Split& train,
    const pnn::v1::TrainingConfig& config, uint64_t seed,
    const TrainOptions& options);

// Accuracy, mean cross-entropy and per-class accuracy of `network` (which
// must map images to class scores) on `test`.
absl::StatusOr<pnn::v1::TestResult> Evaluate(SegmentModel& network,
                                             const Split& test,
                                             int num_classes,
                                             const std::string& device);

}  // namespace pnn

#endif  // PNN_COMMON_TRAINER_H_
