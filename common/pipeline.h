// Model-parallel training (PARALLELISM_MODEL_PARALLEL): the stages of a
// pipeline after the first one.
//
// A pipeline trains the cut network end to end, one segment per stage. The
// first stage reads the data and drives the batches (TrainSegment with
// TrainOptions::pipeline_peer); every later stage is a PipelineStageTrainer
// that is handed each micro-batch's activations from the stage before it,
// runs its segment forward, obtains the gradient of the loss with respect
// to its output (the last stage: cross-entropy against the classes; a
// middle stage: from the rest of the pipeline), backpropagates and returns
// the gradient with respect to its input; after a batch's last micro-batch
// it steps its optimizer once, on the gradients summed over the batch. The
// loss is the batch's mean (a micro-batch's cross-entropy weighs by its
// share of the batch's rows), so with one micro-batch per batch the result
// is exactly conventional training of the whole network with the same seed
// (same initial weights, same data order, same updates), and with more it
// is the same up to the order of floating-point sums.
//
// Thread safety: a PipelineStageTrainer is not thread-safe; drive it from
// one thread (the worker's training thread). The modules live behind a
// pointer so that this header pulls in no torch::nn or optimizer headers.
// libtorch exceptions never escape: they come back as absl::Status.
#ifndef PNN_COMMON_PIPELINE_H_
#define PNN_COMMON_PIPELINE_H_

#include <cstdint>
#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/trainer.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// The rest of the pipeline after a middle stage, as one blocking call (see
// RemoteLossFn, common/trainer.h).
using DownstreamLoss = RemoteLossFn;

class PipelineStageTrainer {
 public:
  // Builds the stage for `task`, which must be a pipeline task
  // (task.pipeline set) with segment_index > 0 and resolved training
  // settings. The segment starts from InitializeWeights(task.seed()), i.e.
  // exactly as its layers start in the whole network, with the optimizer
  // of task.training(). From `options` it uses: device (task.device()
  // wins when set), threads, on_batches / batch_report_interval, on_epoch
  // and on_checkpoint (called on the thread that calls Step); the rest is
  // ignored (the first stage owns cancellation and the data).
  // INVALID_ARGUMENT for a malformed task, FAILED_PRECONDITION for an
  // unusable device.
  static absl::StatusOr<std::unique_ptr<PipelineStageTrainer>> Create(
      const pnn::v1::SegmentTask& task, const TrainOptions& options);

  ~PipelineStageTrainer();
  PipelineStageTrainer(const PipelineStageTrainer&) = delete;
  PipelineStageTrainer& operator=(const PipelineStageTrainer&) = delete;

  // Runs micro-batch position.micro of a batch forward and keeps its graph
  // until Backward. `input` is the previous stage's output, [rows,
  // widths(0)], on any device; `labels` its classes ([rows], integer). A
  // batch opens with its first Forward, whose position must follow the
  // previous batch's (epoch 1 batch 1 first, then batch by batch, epoch by
  // epoch, with a constant batches_per_epoch) once every micro-batch of
  // the previous batch has run backward: a repeated or skipped batch would
  // silently train the stages on different batches, so it is
  // FAILED_PRECONDITION, as is a micro-batch run twice or outside
  // [0, position.micro_batches). A middle stage sends its output to
  // `downstream` (PipelinePeer::Send; the last stage never does).
  absl::Status Forward(const at::Tensor& input, const at::Tensor& labels,
                       const BatchPosition& position, PipelinePeer* downstream);

  // Runs micro-batch `micro` (forwarded, not yet backward) backward: the
  // last stage from its cross-entropy, a middle stage from the gradient
  // that downstream->Receive(micro) returns. Returns d loss / d input (the
  // shape of its input) and the micro-batch's share of the batch's loss.
  // After the batch's last micro-batch the optimizer steps; when
  // position.checkpoint was set, on_checkpoint receives this stage's
  // weights after the step (after on_epoch at an epoch's end), so that
  // every stage checkpoints the same batch.
  // Errors: a non-finite loss is FAILED_PRECONDITION ("training
  // diverged"); the downstream's error is returned as is; after any error
  // of Forward or Backward the stage is spent and every later call returns
  // that error.
  absl::StatusOr<RemoteLoss> Backward(int micro, PipelinePeer* downstream);

  // A batch that is one micro-batch, with the rest of the pipeline as a
  // blocking call: Forward, then Backward.
  absl::StatusOr<RemoteLoss> Step(const at::Tensor& input,
                                  const at::Tensor& labels,
                                  const BatchPosition& position,
                                  const DownstreamLoss& downstream);

  // Ends training and returns the segment's weights, per-epoch metrics and
  // cost: the analytic figures (activations: as many micro-batches as the
  // schedule keeps), wall time and samples/s from the first batch to the
  // last, the idle fraction, peak RSS growth, the process's CPU time over
  // the same span. Peer bytes are the caller's to fill in (it owns the
  // transport). FAILED_PRECONDITION unless every epoch of
  // task.training().epochs() is complete, or after an error.
  absl::StatusOr<pnn::v1::SegmentResult> Finish();

  int segment_index() const;
  bool is_last() const;  // learns the classes; has no downstream
  // Epochs completed so far.
  int epochs_done() const;

 private:
  struct State;
  explicit PipelineStageTrainer(std::unique_ptr<State> state);

  std::unique_ptr<State> state_;
};

}  // namespace pnn

#endif  // PNN_COMMON_PIPELINE_H_
