// Pieces shared by the two training loops, common/trainer.cc (segments and
// whole networks) and common/pipeline.cc (later pipeline stages): keeping
// them in one place is what makes a pipeline's updates equal the whole
// network's. Internal to common/; not for code outside it.
#ifndef PNN_COMMON_TRAINING_INTERNAL_H_
#define PNN_COMMON_TRAINING_INTERNAL_H_

#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <exception>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/model.h"
#include "pnn/v1/job.pb.h"

namespace pnn::internal {

// The optimizer `config` asks for (resolved: Adam or SGD) over `model`.
inline std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(
    SegmentModel& model, const pnn::v1::TrainingConfig& config) {
  if (config.optimizer() == pnn::v1::OPTIMIZER_SGD) {
    return std::make_unique<torch::optim::SGD>(
        model->parameters(), torch::optim::SGDOptions(config.learning_rate())
                                 .momentum(config.momentum())
                                 .weight_decay(config.weight_decay()));
  }
  return std::make_unique<torch::optim::Adam>(
      model->parameters(), torch::optim::AdamOptions(config.learning_rate())
                               .weight_decay(config.weight_decay()));
}

// The CUDA index of `device` for common/device_memory.h: -1 off CUDA, 0 for
// "cuda" without an index (what torch resolves it to in a process that
// does not change the current device).
inline int CudaIndex(c10::Device device) {
  if (!device.is_cuda()) return -1;
  return device.has_index() ? device.index() : 0;
}

// Runs `body`, turning libtorch exceptions into a status: they never leave
// common/.
template <typename T, typename Body>
absl::StatusOr<T> Guarded(const char* what, Body&& body) {
  try {
    return body();
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat(what, ": libtorch error: ",
                                            error.what_without_backtrace()));
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat(what, ": ", error.what()));
  }
}

}  // namespace pnn::internal

#endif  // PNN_COMMON_TRAINING_INTERNAL_H_
