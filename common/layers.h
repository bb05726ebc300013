// A network as a run of layers: the shapes its layers take and give, their
// parameters and FLOPs, and the cutting of a network into segments.
// Free of libtorch, so the coordinator can check a layer list at
// submission and the accounting can price it without building a model.
//
// Every network is a layer list inside pnn: a fully connected spec
// (ModelSpec.hidden_widths) is a list of linear layers over the flattened
// image, a layer list (ModelSpec.layers) starts from the image as
// [channels, height, width]. The job's activation follows every weighted
// layer (convolution, linear) except the network's last; a cut right after
// a weighted layer falls before its activation, so the next segment starts
// with it. Pure functions; errors are INVALID_ARGUMENT naming the field.
#ifndef PNN_COMMON_LAYERS_H_
#define PNN_COMMON_LAYERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// The data set's images.
struct ImageShape {
  int channels = 1;
  int rows = 0;
  int cols = 0;
  int64_t size() const { return int64_t{channels} * rows * cols; }
};

// Per-sample shape of a tensor between layers: [features] or
// [channels, height, width].
using SampleShape = std::vector<int64_t>;
int64_t Elements(const SampleShape& shape);
// "784", "32x14x14".
std::string ShapeString(const SampleShape& shape);

// Consecutive layers of a network: the whole network or one segment.
struct Architecture {
  // Network-wide 1-based index of layers[0].
  int first_layer = 1;
  // Resolved: defaults filled, every linear layer's out_features set.
  std::vector<pnn::v1::LayerSpec> layers;
  SampleShape input_shape;
  // Starts with the activation of the layer before (after a cut).
  bool leading_activation = false;
  pnn::v1::Activation activation = pnn::v1::ACTIVATION_RELU;

  int last_layer() const {
    return first_layer + static_cast<int>(layers.size()) - 1;
  }
};

// What one layer takes and gives, and costs per sample.
struct LayerShape {
  SampleShape input;
  SampleShape output;
  int64_t parameters = 0;
  // Multiply-adds count 2; pooling, activations and dropout count nothing.
  int64_t forward_flops = 0;
};

// Convolutions and linear layers: they carry weights, and the activation
// follows them.
bool IsWeighted(const pnn::v1::LayerSpec& layer);
// "conv2d", "max_pool", ... (the spec's field names); "unset" when empty.
std::string LayerKindName(const pnn::v1::LayerSpec& layer);
// Prefix of a weighted layer's parameters: "conv<L>" or "linear<L>".
std::string ParameterPrefix(const pnn::v1::LayerSpec& layer, int layer_index);
// "conv2d 32 k5 s1 p2", "linear 10", "flatten": for tables and logs.
std::string DescribeLayer(const pnn::v1::LayerSpec& layer);

// The shape of every layer of `architecture`, checking that each fits the
// shape before it. Errors name a layer as `field`[i] where i is its
// 0-based position in the network (first_layer - 1 + position).
absl::StatusOr<std::vector<LayerShape>> InferShapes(
    const Architecture& architecture, absl::string_view field = "model.layers");

// The checks of a layer list that need no data set: every layer's kind and
// values, the order of shapes (convolution and pooling on images, linear on
// flat features, a flatten between them), the last layer linear. Fills
// defaults in place: strides.
absl::Status ResolveLayerList(pnn::v1::ModelSpec* model, int max_width);

// The whole network of a resolved spec on `image`: hidden_widths become
// linear layers over the flattened image; a layer list takes the image as
// [channels, height, width] and its last layer gets `num_classes` outputs.
// Errors: a layer that does not fit, a last layer whose out_features is
// not the class count.
absl::StatusOr<Architecture> NetworkArchitecture(
    const pnn::v1::JobSpec& resolved, const ImageShape& image,
    int num_classes);

// Number of layers a spec's cut points index: hidden layers + 1, or the
// layer list's length.
int CuttableLayers(const pnn::v1::ModelSpec& model);

// Layers [first, last] (1-based, network-wide) of `network`, with the
// input shape they take and whether they start with an activation.
absl::StatusOr<Architecture> SliceNetwork(const Architecture& network,
                                          int first, int last);

// One segment of a cut network.
struct SegmentLayout {
  int index = 0;
  Architecture architecture;
  int first_layer() const { return architecture.first_layer; }
  int last_layer() const { return architecture.last_layer(); }
};

// Cuts `network` at the resolved spec's cut points; the cut shapes are the
// output shapes of the layers cut after (what SIL tables must match).
absl::StatusOr<std::vector<SegmentLayout>> CutNetwork(
    const pnn::v1::JobSpec& resolved, const Architecture& network);

// A task's segment (its layers, input shape and activation), and the
// layers before it that an upstream task carries.
Architecture TaskArchitecture(const pnn::v1::SegmentTask& task);
void SetTaskArchitecture(const Architecture& architecture,
                         pnn::v1::SegmentTask* task);
Architecture UpstreamArchitecture(const pnn::v1::SegmentTask& task);

}  // namespace pnn

#endif  // PNN_COMMON_LAYERS_H_
