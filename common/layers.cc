#include "common/layers.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace pnn {
namespace {

using pnn::v1::LayerSpec;

// Largest per-sample tensor between two layers: a request must not make a
// process allocate gigabytes per sample.
constexpr int64_t kMaxSampleElements = int64_t{1} << 24;
constexpr int kMaxKernel = 64;

absl::Status LayerError(absl::string_view field, int position,
                        absl::string_view rule) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, "[", position, "]: ", rule));
}

// Output length of a convolution or pooling window along one axis; < 1
// when the window does not fit.
int64_t WindowOutput(int64_t input, int kernel, int stride, int padding) {
  const int64_t padded = input + 2 * int64_t{padding};
  if (padded < kernel) return 0;
  return (padded - kernel) / stride + 1;
}

// The shape after a convolution or pooling layer, or why it does not fit.
absl::StatusOr<SampleShape> WindowShape(const SampleShape& in, int channels,
                                        int kernel, int stride, int padding,
                                        absl::string_view field, int position) {
  if (in.size() != 3) {
    return LayerError(field, position,
                      absl::StrCat("needs an image input [channels, height, "
                                   "width], got the flat input ",
                                   ShapeString(in)));
  }
  const int64_t rows = WindowOutput(in[1], kernel, stride, padding);
  const int64_t cols = WindowOutput(in[2], kernel, stride, padding);
  if (rows < 1 || cols < 1) {
    return LayerError(
        field, position,
        absl::StrCat("kernel ", kernel, " is larger than the ", in[1], "x",
                     in[2], " input", padding > 0 ? " with its padding" : ""));
  }
  return SampleShape{channels, rows, cols};
}

// InferShapes for one layer.
absl::StatusOr<LayerShape> InferLayer(const LayerSpec& layer,
                                      const SampleShape& in,
                                      absl::string_view field, int position) {
  LayerShape shape;
  shape.input = in;
  switch (layer.kind_case()) {
    case LayerSpec::kConv2D: {
      const auto& conv = layer.conv2d();
      PNN_ASSIGN_OR_RETURN(
          shape.output, WindowShape(in, conv.out_channels(), conv.kernel(),
                                    std::max(1, conv.stride()), conv.padding(),
                                    field, position));
      const int64_t fan_in = in[0] * conv.kernel() * conv.kernel();
      shape.parameters = conv.out_channels() * fan_in + conv.out_channels();
      shape.forward_flops = 2 * fan_in * Elements(shape.output);
      break;
    }
    case LayerSpec::kMaxPool:
    case LayerSpec::kAvgPool: {
      const auto& pool =
          layer.has_max_pool() ? layer.max_pool() : layer.avg_pool();
      const int stride = pool.stride() > 0 ? pool.stride() : pool.kernel();
      PNN_ASSIGN_OR_RETURN(
          shape.output,
          WindowShape(in, in.empty() ? 0 : static_cast<int>(in[0]),
                      pool.kernel(), stride, pool.padding(), field, position));
      break;
    }
    case LayerSpec::kFlatten:
      if (in.size() != 3) {
        return LayerError(field, position,
                          absl::StrCat("flatten needs an image input, the "
                                       "input is flat already (",
                                       ShapeString(in), ")"));
      }
      shape.output = {Elements(in)};
      break;
    case LayerSpec::kLinear: {
      if (in.size() != 1) {
        return LayerError(
            field, position,
            absl::StrCat("linear needs a flat input, got ", ShapeString(in),
                         "; add a flatten layer before it"));
      }
      const int64_t out = layer.linear().out_features();
      shape.output = {out};
      shape.parameters = in[0] * out + out;
      shape.forward_flops = 2 * in[0] * out;
      break;
    }
    case LayerSpec::kDropout:
      shape.output = in;
      break;
    default:
      return LayerError(field, position, "the layer has no kind");
  }
  if (Elements(shape.output) > kMaxSampleElements) {
    return LayerError(field, position,
                      absl::StrCat("its output ", ShapeString(shape.output),
                                   " has more than ", kMaxSampleElements,
                                   " elements per sample"));
  }
  return shape;
}

absl::Status CheckRange(absl::string_view field, int position,
                        absl::string_view name, int64_t value, int64_t low,
                        int64_t high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return LayerError(
      field, position,
      absl::StrCat(name, " must be in [", low, ", ", high, "], got ", value));
}

// The values of one layer (no shapes): ranges, defaults.
absl::Status ResolveLayerValues(LayerSpec* layer, int position, bool last,
                                int max_width) {
  constexpr absl::string_view kField = "model.layers";
  switch (layer->kind_case()) {
    case LayerSpec::kConv2D: {
      auto* conv = layer->mutable_conv2d();
      PNN_RETURN_IF_ERROR(CheckRange(kField, position, "conv2d.out_channels",
                                     conv->out_channels(), 1, max_width));
      PNN_RETURN_IF_ERROR(CheckRange(kField, position, "conv2d.kernel",
                                     conv->kernel(), 1, kMaxKernel));
      if (conv->stride() == 0) conv->set_stride(1);
      PNN_RETURN_IF_ERROR(CheckRange(kField, position, "conv2d.stride",
                                     conv->stride(), 1, kMaxKernel));
      return CheckRange(kField, position, "conv2d.padding", conv->padding(), 0,
                        conv->kernel() - 1);
    }
    case LayerSpec::kMaxPool:
    case LayerSpec::kAvgPool: {
      const char* name = layer->has_max_pool() ? "max_pool" : "avg_pool";
      auto* pool = layer->has_max_pool() ? layer->mutable_max_pool()
                                         : layer->mutable_avg_pool();
      PNN_RETURN_IF_ERROR(CheckRange(kField, position,
                                     absl::StrCat(name, ".kernel"),
                                     pool->kernel(), 1, kMaxKernel));
      if (pool->stride() == 0) pool->set_stride(pool->kernel());
      PNN_RETURN_IF_ERROR(CheckRange(kField, position,
                                     absl::StrCat(name, ".stride"),
                                     pool->stride(), 1, kMaxKernel));
      // libtorch's rule: padding beyond half the window pools only padding.
      return CheckRange(kField, position, absl::StrCat(name, ".padding"),
                        pool->padding(), 0, pool->kernel() / 2);
    }
    case LayerSpec::kFlatten:
      return absl::OkStatus();
    case LayerSpec::kLinear:
      if (last) {
        return CheckRange(kField, position,
                          "linear.out_features (the class "
                          "scores: 0 or the class count)",
                          layer->linear().out_features(), 0, max_width);
      }
      return CheckRange(kField, position, "linear.out_features",
                        layer->linear().out_features(), 1, max_width);
    case LayerSpec::kDropout: {
      const float p = layer->dropout().p();
      if (!std::isfinite(p) || p < 0 || p >= 1) {
        return LayerError(kField, position,
                          absl::StrCat("dropout.p must be in [0, 1), got ", p));
      }
      return absl::OkStatus();
    }
    default:
      return LayerError(kField, position,
                        "the layer has no kind; set one of conv2d, max_pool, "
                        "avg_pool, flatten, linear, dropout");
  }
}

}  // namespace

int64_t Elements(const SampleShape& shape) {
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;
  return elements;
}

std::string ShapeString(const SampleShape& shape) {
  return absl::StrJoin(shape, "x");
}

bool IsWeighted(const LayerSpec& layer) {
  return layer.has_conv2d() || layer.has_linear();
}

std::string LayerKindName(const LayerSpec& layer) {
  switch (layer.kind_case()) {
    case LayerSpec::kConv2D:
      return "conv2d";
    case LayerSpec::kMaxPool:
      return "max_pool";
    case LayerSpec::kAvgPool:
      return "avg_pool";
    case LayerSpec::kFlatten:
      return "flatten";
    case LayerSpec::kLinear:
      return "linear";
    case LayerSpec::kDropout:
      return "dropout";
    default:
      return "unset";
  }
}

std::string ParameterPrefix(const LayerSpec& layer, int layer_index) {
  return absl::StrCat(layer.has_conv2d() ? "conv" : "linear", layer_index);
}

std::string DescribeLayer(const LayerSpec& layer) {
  switch (layer.kind_case()) {
    case LayerSpec::kConv2D:
      return absl::StrCat("conv2d ", layer.conv2d().out_channels(), " k",
                          layer.conv2d().kernel(), " s",
                          layer.conv2d().stride(), " p",
                          layer.conv2d().padding());
    case LayerSpec::kMaxPool:
    case LayerSpec::kAvgPool: {
      const auto& pool =
          layer.has_max_pool() ? layer.max_pool() : layer.avg_pool();
      return absl::StrCat(
          LayerKindName(layer), " k", pool.kernel(), " s", pool.stride(),
          pool.padding() > 0 ? absl::StrCat(" p", pool.padding()) : "");
    }
    case LayerSpec::kLinear:
      return layer.linear().out_features() > 0
                 ? absl::StrCat("linear ", layer.linear().out_features())
                 : "linear (classes)";
    case LayerSpec::kDropout:
      return absl::StrCat("dropout ", layer.dropout().p());
    default:
      return LayerKindName(layer);
  }
}

absl::StatusOr<std::vector<LayerShape>> InferShapes(
    const Architecture& architecture, absl::string_view field) {
  std::vector<LayerShape> shapes;
  SampleShape shape = architecture.input_shape;
  for (size_t i = 0; i < architecture.layers.size(); ++i) {
    const int position = architecture.first_layer - 1 + static_cast<int>(i);
    PNN_ASSIGN_OR_RETURN(LayerShape layer, InferLayer(architecture.layers[i],
                                                      shape, field, position));
    shape = layer.output;
    shapes.push_back(std::move(layer));
  }
  return shapes;
}

absl::Status ResolveLayerList(pnn::v1::ModelSpec* model, int max_width) {
  const int count = model->layers_size();
  // The rank flows from the image ([channels, height, width]) without the
  // data set: what fits where is known before any size is.
  bool flat = false;
  for (int i = 0; i < count; ++i) {
    LayerSpec* layer = model->mutable_layers(i);
    PNN_RETURN_IF_ERROR(
        ResolveLayerValues(layer, i, i + 1 == count, max_width));
    const std::string kind = LayerKindName(*layer);
    if ((layer->has_conv2d() || layer->has_max_pool() ||
         layer->has_avg_pool() || layer->has_flatten()) &&
        flat) {
      return LayerError("model.layers", i,
                        absl::StrCat(kind,
                                     " needs an image input, but a "
                                     "flatten layer came before it"));
    }
    if (layer->has_linear() && !flat) {
      return LayerError("model.layers", i,
                        "linear needs a flat input; add a flatten layer "
                        "before it");
    }
    if (layer->has_flatten()) flat = true;
  }
  if (count < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.layers: a network to cut needs at least two layers, got ",
        count));
  }
  if (!model->layers(count - 1).has_linear()) {
    return LayerError("model.layers", count - 1,
                      absl::StrCat("the last layer must be linear (it "
                                   "outputs the class scores), got ",
                                   LayerKindName(model->layers(count - 1))));
  }
  return absl::OkStatus();
}

absl::StatusOr<Architecture> NetworkArchitecture(
    const pnn::v1::JobSpec& resolved, const ImageShape& image,
    int num_classes) {
  const pnn::v1::ModelSpec& model = resolved.model();
  Architecture network;
  network.activation = model.activation();
  if (model.layers().empty()) {
    network.input_shape = {image.size()};
    for (int width : model.hidden_widths()) {
      network.layers.emplace_back().mutable_linear()->set_out_features(width);
    }
    network.layers.emplace_back().mutable_linear()->set_out_features(
        num_classes);
  } else {
    network.input_shape = {image.channels, image.rows, image.cols};
    network.layers.assign(model.layers().begin(), model.layers().end());
    auto* last = network.layers.back().mutable_linear();
    if (last->out_features() != 0 && last->out_features() != num_classes) {
      return LayerError(
          "model.layers", static_cast<int>(network.layers.size()) - 1,
          absl::StrCat("the last layer outputs the class "
                       "scores: out_features must be 0 or ",
                       num_classes, ", got ", last->out_features()));
    }
    last->set_out_features(num_classes);
  }
  PNN_RETURN_IF_ERROR(InferShapes(network).status());
  return network;
}

int CuttableLayers(const pnn::v1::ModelSpec& model) {
  return model.layers().empty() ? model.hidden_widths_size() + 1
                                : model.layers_size();
}

absl::StatusOr<Architecture> SliceNetwork(const Architecture& network,
                                          int first, int last) {
  if (first < network.first_layer || last < first ||
      last > network.last_layer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layers ", first, "..", last, " are not within layers ",
                     network.first_layer, "..", network.last_layer()));
  }
  PNN_ASSIGN_OR_RETURN(const std::vector<LayerShape> shapes,
                       InferShapes(network));
  const int begin = first - network.first_layer;
  Architecture slice;
  slice.first_layer = first;
  slice.activation = network.activation;
  slice.layers.assign(
      network.layers.begin() + begin,
      network.layers.begin() + (last - network.first_layer + 1));
  slice.input_shape = shapes[begin].input;
  slice.leading_activation = begin == 0 ? network.leading_activation
                                        : IsWeighted(network.layers[begin - 1]);
  return slice;
}

absl::StatusOr<std::vector<SegmentLayout>> CutNetwork(
    const pnn::v1::JobSpec& resolved, const Architecture& network) {
  std::vector<int> bounds = {network.first_layer - 1};
  for (int cut : resolved.model().cut_after_layers()) bounds.push_back(cut);
  bounds.push_back(network.last_layer());
  std::vector<SegmentLayout> segments;
  for (size_t s = 0; s + 1 < bounds.size(); ++s) {
    SegmentLayout layout;
    layout.index = static_cast<int>(s);
    PNN_ASSIGN_OR_RETURN(layout.architecture,
                         SliceNetwork(network, bounds[s] + 1, bounds[s + 1]));
    segments.push_back(std::move(layout));
  }
  return segments;
}

Architecture TaskArchitecture(const pnn::v1::SegmentTask& task) {
  Architecture architecture;
  architecture.first_layer = task.first_layer();
  architecture.layers.assign(task.layers().begin(), task.layers().end());
  architecture.input_shape.assign(task.input_shape().begin(),
                                  task.input_shape().end());
  architecture.leading_activation = task.leading_activation();
  architecture.activation = task.activation();
  return architecture;
}

void SetTaskArchitecture(const Architecture& architecture,
                         pnn::v1::SegmentTask* task) {
  task->set_first_layer(architecture.first_layer);
  task->set_last_layer(architecture.last_layer());
  task->mutable_layers()->Assign(architecture.layers.begin(),
                                 architecture.layers.end());
  task->mutable_input_shape()->Assign(architecture.input_shape.begin(),
                                      architecture.input_shape.end());
  task->set_leading_activation(architecture.leading_activation);
  task->set_activation(architecture.activation);
}

Architecture UpstreamArchitecture(const pnn::v1::SegmentTask& task) {
  Architecture architecture;
  architecture.first_layer = 1;
  architecture.layers.assign(task.upstream().layers().begin(),
                             task.upstream().layers().end());
  architecture.input_shape.assign(task.upstream().input_shape().begin(),
                                  task.upstream().input_shape().end());
  architecture.activation = task.activation();
  return architecture;
}

}  // namespace pnn
