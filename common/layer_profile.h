// Measured cost of each layer of a network: the time of one training step
// (forward, backward, optimizer step) at a batch size, on random inputs,
// layer by layer, so that a network too large for the device is profiled
// without ever being built whole. Used to choose cuts by measured time
// (BALANCE_OBJECTIVE_MEASURED_TIME, common/auto_cut.h).
//
// Blocks the calling thread for about (batches + 1) steps per layer; uses
// the process's torch thread count (SetTrainingThreads). libtorch
// exceptions come back as absl::Status.
#ifndef PNN_COMMON_LAYER_PROFILE_H_
#define PNN_COMMON_LAYER_PROFILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// Timed batches per layer when a request leaves it unset, and the most.
inline constexpr int kDefaultProfileBatches = 5;
inline constexpr int kMaxProfileBatches = 50;

// Seconds per training batch of each layer of `network` (index i: layer
// network.first_layer + i) at training.batch_size with training's optimizer
// and precision, on `device` ("cpu", "cuda", "cuda:N"). Each layer runs one
// untimed step, then timed ones (at least `batches`, and at least 50 ms of
// them, at most 500) and reports the median step (each step waits for
// the device to finish); the first layer of a network
// computes no gradient for its input, as in training. INVALID_ARGUMENT for
// batches outside [1, kMaxProfileBatches], FAILED_PRECONDITION for an
// unusable device.
absl::StatusOr<std::vector<double>> ProfileLayers(
    const Architecture& network, const pnn::v1::TrainingConfig& training,
    int batches, const std::string& device);

}  // namespace pnn

#endif  // PNN_COMMON_LAYER_PROFILE_H_
