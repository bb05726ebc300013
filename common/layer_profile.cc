#include "common/layer_profile.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model.h"
#include "common/precision.h"
#include "common/status_macros.h"
#include "common/trainer.h"
#include "common/training_internal.h"
#include "common/weight_gradient_tape.h"

namespace pnn {
namespace {

// A layer is timed for at least this long (and `batches` steps), up to
// kMaxStepsPerLayer steps.
constexpr double kMinSecondsPerLayer = 0.05;
constexpr int kMaxStepsPerLayer = 500;

// Seconds per step of one layer (a one-layer slice of the network).
absl::StatusOr<double> TimeLayer(const Architecture& layer,
                                 const pnn::v1::TrainingConfig& training,
                                 int batches, c10::Device device) {
  SegmentModel model(layer);
  model->to(device);
  model->train();
  const bool has_parameters = !model->parameters().empty();
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (has_parameters) optimizer = internal::MakeOptimizer(model, training);
  const at::Tensor input =
      at::rand({training.batch_size(), Elements(layer.input_shape)},
               at::TensorOptions(device))
          .requires_grad_(layer.first_layer > 1);
  at::Tensor output_gradient;
  at::Tensor last_output;
  // The backward pass training runs (common/weight_gradient_tape.h).
  WeightGradientTape tape(model->parameters());
  auto step = [&] {
    if (optimizer) optimizer->zero_grad();
    at::Tensor output;
    {
      const ForwardPrecision precision(training.precision(), device);
      tape.BeginForward(0);
      output = model->forward(input, &tape);
    }
    output = output.to(at::kFloat);
    if (!output_gradient.defined()) output_gradient = at::randn_like(output);
    // A layer without parameters or input gradient (a first pooling layer)
    // has nothing to backpropagate.
    if (output.requires_grad()) {
      tape.Backward(0, output, output_gradient, input);
      tape.AccumulateWeightGradients();
    }
    if (optimizer) optimizer->step();
    last_output = output.detach();
  };
  // Reading a value waits for the device to finish what was queued.
  auto wait_for_device = [&] { (void)last_output.sum().item<double>(); };
  step();  // warm-up: allocations, kernel selection
  wait_for_device();
  // The median step, of at least `batches` steps and at least
  // kMinSecondsPerLayer of them: a small layer's step takes a millisecond,
  // and a few of them on a shared machine measure its stray stalls
  // (another process, a page fault) more than the layer; a median is moved
  // by them less than a mean.
  std::vector<double> steps;
  double timed = 0;
  for (int i = 0; i < batches || (timed < kMinSecondsPerLayer &&
                                  i < kMaxStepsPerLayer);
       ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    wait_for_device();
    steps.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
    timed += steps.back();
  }
  std::sort(steps.begin(), steps.end());
  const size_t middle = steps.size() / 2;
  return steps.size() % 2 == 1 ? steps[middle]
                               : 0.5 * (steps[middle - 1] + steps[middle]);
}

}  // namespace

absl::StatusOr<std::vector<double>> ProfileLayers(
    const Architecture& network, const pnn::v1::TrainingConfig& training,
    int batches, const std::string& device_name) {
  if (batches < 1 || batches > kMaxProfileBatches) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile batches must be in [1, ", kMaxProfileBatches,
                     "], got ", batches));
  }
  if (training.batch_size() < 1) {
    return absl::InvalidArgumentError("profiling needs training.batch_size");
  }
  PNN_ASSIGN_OR_RETURN(const c10::Device device, ResolveDevice(device_name));
  PNN_RETURN_IF_ERROR(CheckPrecision(training.precision(), device));
  PNN_RETURN_IF_ERROR(InferShapes(network, "profiled network").status());
  const MatmulPrecision matmul_precision(training.precision(), device);
  std::vector<double> seconds;
  for (int layer = network.first_layer; layer <= network.last_layer();
       ++layer) {
    PNN_ASSIGN_OR_RETURN(const Architecture slice,
                         SliceNetwork(network, layer, layer));
    PNN_ASSIGN_OR_RETURN(const double layer_seconds,
                         internal::Guarded<double>("profiling layer", [&] {
                           return TimeLayer(slice, training, batches, device);
                         }));
    seconds.push_back(layer_seconds);
  }
  return seconds;
}

}  // namespace pnn
