// Networks and their segments as libtorch modules, built from a layer
// architecture (common/layers.h): convolutions, pooling, flatten, linear
// layers and dropout, with the job's activation after every weighted layer
// but the architecture's last.
//
// A segment that does not start at the input begins with the activation of
// the layer before its cut when that layer is weighted, so the segments'
// composition performs exactly the network's operations in the network's
// order (and joining is bit-exact).
//
// Parameters are named "<kind><L>.weight" / "<kind><L>.bias" (kind "conv"
// or "linear") with the network-wide layer index L, which is what makes
// segments joinable by name. A module takes its input as [batch,
// ...input_shape] or flattened as [batch, elements]; images arrive flat.
// Modules are not thread-safe; give each thread its own.
#ifndef PNN_COMMON_MODEL_H_
#define PNN_COMMON_MODEL_H_

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

class WeightGradientTape;

class SegmentModelImpl : public torch::nn::Module {
 public:
  // `architecture` must fit its input (InferShapes); throws otherwise.
  explicit SegmentModelImpl(Architecture architecture);

  // With a tape (common/weight_gradient_tape.h), the linear layers leave
  // their weight gradients to it.
  at::Tensor forward(at::Tensor x, WeightGradientTape* tape = nullptr);

  int first_layer() const { return architecture_.first_layer; }
  int last_layer() const { return architecture_.last_layer(); }
  const Architecture& architecture() const { return architecture_; }

  // A weighted layer's parameters (shared with the module).
  struct Weighted {
    int layer = 0;  // network-wide index
    at::Tensor weight;
    at::Tensor bias;
  };
  std::vector<Weighted> weighted_layers() const;
  // Seeds the dropout masks of every dropout layer from (seed, layer).
  void SeedDropout(uint64_t seed);

 private:
  at::Tensor Activate(const at::Tensor& x) const;
  at::Tensor ApplyLayer(size_t position, const at::Tensor& x,
                        WeightGradientTape* tape);

  Architecture architecture_;
  // One entry per layer; a null holder where the layer has no such module.
  std::vector<torch::nn::Conv2d> convs_;
  std::vector<torch::nn::Linear> linears_;
  // Per dropout layer: its seed and its generator, on the device the layer
  // last ran on.
  std::vector<uint64_t> dropout_seeds_;
  std::vector<at::Generator> dropout_generators_;
};
TORCH_MODULE(SegmentModel);

// A random generator of `device`'s kind seeded with `seed`, private to the
// caller (not the device's default generator): CPU generators give the same
// stream on every machine; a CUDA one gives a stream of its own, so work
// drawn on a GPU differs from the CPU's but repeats on the same GPU.
at::Generator SeededGenerator(uint64_t seed, c10::Device device);

// Re-initialises every weighted layer like PyTorch's default (uniform in
// +-1/sqrt(fan_in), weight and bias) from a generator seeded by (seed,
// layer index), so a layer starts identically whether it lives in a
// segment or in the whole network, whatever else the process does with
// torch's global RNG. Seeds the dropout masks the same way.
void InitializeWeights(SegmentModel& model, uint64_t seed);

// Snapshot of the parameters as a message (CPU float32 copies).
pnn::v1::SegmentWeights ExportWeights(const SegmentModel& model,
                                      int segment_index);

// Copies `weights` into `model`; every parameter must be present with the
// right shape and finite values, and no extra tensor may appear.
absl::Status ImportWeights(const pnn::v1::SegmentWeights& weights,
                           SegmentModel& model);

// Builds a module of `architecture` holding `weights`, whose layer range
// must be the architecture's.
absl::StatusOr<SegmentModel> ModelFromWeights(
    const pnn::v1::SegmentWeights& weights, const Architecture& architecture);

// Joins consecutive segments into one network covering all their layers;
// parameters are copied, the inputs are left untouched.
absl::StatusOr<SegmentModel> JoinSegments(
    const std::vector<SegmentModel>& parts);

// Joins trained segments, ordered by segment index, into `network` (the
// whole network's architecture): ModelFromWeights of each segment's slice,
// then JoinSegments.
absl::StatusOr<SegmentModel> AssembleNetwork(
    const std::vector<pnn::v1::SegmentWeights>& segments,
    const Architecture& network);

}  // namespace pnn

#endif  // PNN_COMMON_MODEL_H_
