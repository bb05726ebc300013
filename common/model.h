// Fully connected networks and their segments, as libtorch modules.
//
// A network of L linear layers is  x -> lin1 -> act -> lin2 -> ... -> linL.
// A segment covers linear layers [first, last] of it; a segment that does
// not start at the input begins with the activation of the layer before the
// cut, so the segments' composition performs exactly the network's
// operations in the network's order (and joining is bit-exact).
//
// Parameters are named "linear<L>.weight" / "linear<L>.bias" with the
// network-wide layer index L, which is what makes segments joinable by name.
// Modules are not thread-safe; give each thread its own.
#ifndef PNN_COMMON_MODEL_H_
#define PNN_COMMON_MODEL_H_

#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "absl/status/statusor.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

class MlpSegmentImpl : public torch::nn::Module {
 public:
  // `widths` are the boundary widths (input, hidden..., output) of linear
  // layers first_layer .. first_layer + widths.size() - 2.
  MlpSegmentImpl(int first_layer, std::vector<int> widths,
                 pnn::v1::Activation activation);

  at::Tensor forward(at::Tensor x);

  int first_layer() const { return first_layer_; }
  int last_layer() const {
    return first_layer_ + static_cast<int>(linears_.size()) - 1;
  }
  const std::vector<int>& widths() const { return widths_; }
  pnn::v1::Activation activation() const { return activation_; }
  const std::vector<torch::nn::Linear>& linears() const { return linears_; }

 private:
  at::Tensor Activate(const at::Tensor& x) const;

  int first_layer_;
  std::vector<int> widths_;
  pnn::v1::Activation activation_;
  std::vector<torch::nn::Linear> linears_;
};
TORCH_MODULE(MlpSegment);

// Re-initialises every linear layer like PyTorch's default (uniform in
// +-1/sqrt(fan_in)) from a generator seeded by (seed, layer index), so a
// layer starts identically whether it lives in a segment or in the whole
// network, whatever else the process does with torch's global RNG.
void InitializeWeights(MlpSegment& model, uint64_t seed);

// Snapshot of the parameters as a message (CPU float32 copies).
pnn::v1::SegmentWeights ExportWeights(const MlpSegment& model,
                                      int segment_index);

// Copies `weights` into `model`; every parameter must be present with the
// right shape and finite values, and no extra tensor may appear.
absl::Status ImportWeights(const pnn::v1::SegmentWeights& weights,
                           MlpSegment& model);

// Builds a module for `weights` (widths taken from the tensors' shapes).
absl::StatusOr<MlpSegment> ModelFromWeights(
    const pnn::v1::SegmentWeights& weights, pnn::v1::Activation activation);

// Joins consecutive segments into one network covering all their layers;
// parameters are copied, the inputs are left untouched.
absl::StatusOr<MlpSegment> JoinSegments(const std::vector<MlpSegment>& parts);

// Joins trained segments, ordered by segment index, into the whole network
// (ModelFromWeights of each, then JoinSegments).
absl::StatusOr<MlpSegment> AssembleNetwork(
    const std::vector<pnn::v1::SegmentWeights>& segments,
    pnn::v1::Activation activation);

}  // namespace pnn

#endif  // PNN_COMMON_MODEL_H_
