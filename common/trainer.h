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

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "common/dataset.h"
#include "common/model.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

struct TrainOptions {
  // "cpu", "cuda" or "cuda:N". Asking for CUDA where there is none is a
  // FAILED_PRECONDITION error, never a silent fallback.
  std::string device = "cpu";
  // Intra-op threads for torch (0: leave the process setting alone).
  int threads = 0;
  // After every epoch, on the training thread, with the live model (copy
  // what you need with ExportWeights).
  std::function<void(const pnn::v1::EpochMetrics&, const MlpSegment&)>
      on_epoch;
  // Every `batch_report_interval` batches: epoch (1-based), batches done in
  // the epoch, batches per epoch, mean loss so far in the epoch.
  std::function<void(int, int64_t, int64_t, double)> on_batches;
  int64_t batch_report_interval = 50;
  // Polled between batches; returning true ends training with CANCELLED.
  std::function<bool()> should_stop;
};

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
    MlpSegment& network, const Split& train,
    const pnn::v1::TrainingConfig& config, uint64_t seed,
    const TrainOptions& options);

// Accuracy, mean cross-entropy and per-class accuracy of `network` (which
// must map images to class scores) on `test`.
absl::StatusOr<pnn::v1::TestResult> Evaluate(MlpSegment& network,
                                             const Split& test,
                                             int num_classes,
                                             const std::string& device);

}  // namespace pnn

#endif  // PNN_COMMON_TRAINER_H_
