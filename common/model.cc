#include "common/model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "common/weight_gradient_tape.h"

namespace pnn {
namespace {

using pnn::v1::LayerSpec;

// Keeps dropout masks independent of the weight-initialisation stream.
constexpr uint64_t kDropoutStream = 0x64726f70ULL;

// Deterministic per-layer seed (splitmix64 of seed and layer).
uint64_t LayerSeed(uint64_t seed, int layer) {
  uint64_t z =
      seed + 0x9e3779b97f4a7c15ULL * (static_cast<uint64_t>(layer) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

SegmentModelImpl::SegmentModelImpl(Architecture architecture)
    : architecture_(std::move(architecture)) {
  const auto shapes = InferShapes(architecture_);
  if (!shapes.ok()) throw std::invalid_argument(shapes.status().ToString());
  const size_t count = architecture_.layers.size();
  convs_.assign(count, torch::nn::Conv2d(nullptr));
  linears_.assign(count, torch::nn::Linear(nullptr));
  dropout_seeds_.assign(count, 0);
  dropout_generators_.resize(count);
  for (size_t i = 0; i < count; ++i) {
    const LayerSpec& layer = architecture_.layers[i];
    const int index = architecture_.first_layer + static_cast<int>(i);
    const SampleShape& in = (*shapes)[i].input;
    if (layer.has_conv2d()) {
      const auto& conv = layer.conv2d();
      convs_[i] = register_module(
          ParameterPrefix(layer, index),
          torch::nn::Conv2d(torch::nn::Conv2dOptions(in[0], conv.out_channels(),
                                                     conv.kernel())
                                .stride(conv.stride())
                                .padding(conv.padding())));
    } else if (layer.has_linear()) {
      linears_[i] = register_module(
          ParameterPrefix(layer, index),
          torch::nn::Linear(in[0], layer.linear().out_features()));
    } else if (layer.has_dropout()) {
      dropout_seeds_[i] = LayerSeed(kDropoutStream, index);
      dropout_generators_[i] =
          SeededGenerator(dropout_seeds_[i], c10::Device(c10::kCPU));
    }
  }
}

at::Tensor SegmentModelImpl::Activate(const at::Tensor& x) const {
  switch (architecture_.activation) {
    case pnn::v1::ACTIVATION_TANH:
      return at::tanh(x);
    case pnn::v1::ACTIVATION_GELU:
      return at::gelu(x);
    case pnn::v1::ACTIVATION_SIGMOID:
      return at::sigmoid(x);
    default:
      return at::relu(x);
  }
}

at::Tensor SegmentModelImpl::ApplyLayer(size_t position, const at::Tensor& x,
                                        WeightGradientTape* tape) {
  const LayerSpec& layer = architecture_.layers[position];
  switch (layer.kind_case()) {
    case LayerSpec::kConv2D:
      return convs_[position]->forward(x);
    case LayerSpec::kLinear:
      if (tape != nullptr) {
        return tape->Linear(x, linears_[position]->weight,
                            linears_[position]->bias);
      }
      return linears_[position]->forward(x);
    case LayerSpec::kMaxPool:
      return at::max_pool2d(x, {layer.max_pool().kernel()},
                            {layer.max_pool().stride()},
                            {layer.max_pool().padding()});
    case LayerSpec::kAvgPool:
      return at::avg_pool2d(x, {layer.avg_pool().kernel()},
                            {layer.avg_pool().stride()},
                            {layer.avg_pool().padding()});
    case LayerSpec::kFlatten:
      return x.flatten(1);
    case LayerSpec::kDropout: {
      const double p = layer.dropout().p();
      if (!is_training() || p == 0) return x;
      // Masks drawn from the layer's own stream on the input's device (a
      // mask drawn on the CPU and copied would stall a GPU every batch):
      // reproducible per device kind.
      at::Generator& generator = dropout_generators_[position];
      if (generator.device() != x.device()) {
        generator = SeededGenerator(dropout_seeds_[position], x.device());
      }
      const at::Tensor keep =
          at::empty(x.sizes(), x.options()).bernoulli_(1.0 - p, generator);
      return x * keep / (1.0 - p);
    }
    default:
      return x;
  }
}

at::Tensor SegmentModelImpl::forward(at::Tensor x, WeightGradientTape* tape) {
  const SampleShape& shape = architecture_.input_shape;
  if (x.dim() == 2 && shape.size() > 1) {
    std::vector<int64_t> sizes = {x.size(0)};
    sizes.insert(sizes.end(), shape.begin(), shape.end());
    x = x.reshape(sizes);
  }
  // A segment after a cut starts with the activation its predecessor's last
  // layer would have applied in the whole network.
  if (architecture_.leading_activation) x = Activate(x);
  const size_t count = architecture_.layers.size();
  for (size_t i = 0; i < count; ++i) {
    x = ApplyLayer(i, x, tape);
    if (IsWeighted(architecture_.layers[i]) && i + 1 < count) x = Activate(x);
  }
  return x;
}

std::vector<SegmentModelImpl::Weighted> SegmentModelImpl::weighted_layers()
    const {
  std::vector<Weighted> layers;
  for (size_t i = 0; i < architecture_.layers.size(); ++i) {
    const int index = architecture_.first_layer + static_cast<int>(i);
    if (!convs_[i].is_empty()) {
      layers.push_back({index, convs_[i]->weight, convs_[i]->bias});
    } else if (!linears_[i].is_empty()) {
      layers.push_back({index, linears_[i]->weight, linears_[i]->bias});
    }
  }
  return layers;
}

void SegmentModelImpl::SeedDropout(uint64_t seed) {
  for (size_t i = 0; i < architecture_.layers.size(); ++i) {
    if (!architecture_.layers[i].has_dropout()) continue;
    const int index = architecture_.first_layer + static_cast<int>(i);
    dropout_seeds_[i] = LayerSeed(seed ^ kDropoutStream, index);
    dropout_generators_[i] =
        SeededGenerator(dropout_seeds_[i], c10::Device(c10::kCPU));
  }
}

at::Generator SeededGenerator(uint64_t seed, c10::Device device) {
  if (device.is_cpu()) return at::detail::createCPUGenerator(seed);
  // A copy of the device's default generator: the same kind without
  // CUDA-only headers, and not shared with anything else in the process.
  at::Generator generator =
      at::globalContext().defaultGenerator(device).clone();
  generator.set_current_seed(seed);
  return generator;
}

void InitializeWeights(SegmentModel& model, uint64_t seed) {
  at::NoGradGuard no_grad;
  for (const auto& layer : model->weighted_layers()) {
    auto generator =
        at::detail::createCPUGenerator(LayerSeed(seed, layer.layer));
    // fan_in: inputs per output (in_features, or in_channels x k x k).
    const double fan_in =
        static_cast<double>(layer.weight.numel() / layer.weight.size(0));
    const double bound = 1.0 / std::sqrt(fan_in);
    // Draw on the CPU so the values do not depend on the device.
    at::Tensor weight = at::empty(layer.weight.sizes(), at::kFloat);
    weight.uniform_(-bound, bound, generator);
    at::Tensor bias = at::empty(layer.bias.sizes(), at::kFloat);
    bias.uniform_(-bound, bound, generator);
    layer.weight.copy_(weight);
    layer.bias.copy_(bias);
  }
  model->SeedDropout(seed);
}

pnn::v1::SegmentWeights ExportWeights(const SegmentModel& model,
                                      int segment_index) {
  pnn::v1::SegmentWeights weights;
  weights.set_segment_index(segment_index);
  weights.set_first_layer(model->first_layer());
  weights.set_last_layer(model->last_layer());
  for (const auto& parameter : model->named_parameters()) {
    *weights.add_tensors() = TensorToProto(parameter.key(), parameter.value());
  }
  return weights;
}

absl::Status ImportWeights(const pnn::v1::SegmentWeights& weights,
                           SegmentModel& model) {
  absl::flat_hash_map<std::string, const pnn::v1::Tensor*> by_name;
  for (const auto& tensor : weights.tensors()) {
    if (!by_name.emplace(tensor.name(), &tensor).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weights: tensor \"", tensor.name(), "\" appears twice"));
    }
  }
  auto parameters = model->named_parameters();
  if (by_name.size() != parameters.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights: expected ", parameters.size(),
                     " tensors for layers ", model->first_layer(), "..",
                     model->last_layer(), ", got ", by_name.size()));
  }
  at::NoGradGuard no_grad;
  for (auto& parameter : parameters) {
    const std::string& name = parameter.key();
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights: tensor \"", name, "\" is missing"));
    }
    // Shape first: the message's payload is decoded only when it has the
    // size the model needs (a worker's result is untrusted input).
    const auto& shape = it->second->shape();
    if (!parameter.value().sizes().equals(
            c10::IntArrayRef(shape.data(), shape.size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights: tensor \"", name, "\" has shape [",
                       absl::StrJoin(shape, ", "), "], the model needs ",
                       c10::str(parameter.value().sizes())));
    }
    PNN_ASSIGN_OR_RETURN(at::Tensor value, TensorFromProto(*it->second));
    if (!at::isfinite(value).all().item<bool>()) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights: tensor \"", name, "\" contains NaN or Inf"));
    }
    parameter.value().copy_(value);
  }
  return absl::OkStatus();
}

absl::StatusOr<SegmentModel> ModelFromWeights(
    const pnn::v1::SegmentWeights& weights, const Architecture& architecture) {
  if (weights.first_layer() != architecture.first_layer ||
      weights.last_layer() != architecture.last_layer()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights: layers ", weights.first_layer(), "..", weights.last_layer(),
        " where layers ", architecture.first_layer, "..",
        architecture.last_layer(), " were expected"));
  }
  try {
    SegmentModel model(architecture);
    PNN_RETURN_IF_ERROR(ImportWeights(weights, model));
    return model;
  } catch (const std::exception& error) {  // e.g. out of memory
    return absl::ResourceExhaustedError(
        absl::StrCat("weights: cannot build the segment: ", error.what()));
  }
}

absl::StatusOr<SegmentModel> JoinSegments(
    const std::vector<SegmentModel>& parts) {
  if (parts.empty()) {
    return absl::InvalidArgumentError("JoinSegments: no segments");
  }
  Architecture joined_architecture = parts.front()->architecture();
  for (size_t i = 1; i < parts.size(); ++i) {
    const Architecture& previous = parts[i - 1]->architecture();
    const Architecture& part = parts[i]->architecture();
    if (part.first_layer != previous.last_layer() + 1 ||
        part.activation != previous.activation) {
      return absl::InvalidArgumentError(absl::StrCat(
          "JoinSegments: segment ", i, " (layers ", part.first_layer, "..",
          part.last_layer(), ") does not continue segment ", i - 1, " (layers ",
          previous.first_layer, "..", previous.last_layer(), ")"));
    }
    joined_architecture.layers.insert(joined_architecture.layers.end(),
                                      part.layers.begin(), part.layers.end());
  }
  try {
    SegmentModel joined(joined_architecture);
    auto targets = joined->named_parameters();
    at::NoGradGuard no_grad;
    for (const SegmentModel& part : parts) {
      for (const auto& parameter : part->named_parameters()) {
        at::Tensor* target = targets.find(parameter.key());
        if (target == nullptr ||
            !target->sizes().equals(parameter.value().sizes())) {
          return absl::InvalidArgumentError(absl::StrCat(
              "JoinSegments: parameter ", parameter.key(),
              " does not fit the joined network (do the segments continue "
              "each other's shapes?)"));
        }
        target->copy_(parameter.value());
      }
    }
    return joined;
  } catch (const std::exception& error) {
    return absl::InvalidArgumentError(
        absl::StrCat("JoinSegments: ", error.what()));
  }
}

absl::StatusOr<SegmentModel> AssembleNetwork(
    const std::vector<pnn::v1::SegmentWeights>& segments,
    const Architecture& network) {
  std::vector<SegmentModel> parts;
  try {
    for (size_t i = 0; i < segments.size(); ++i) {
      if (segments[i].segment_index() != static_cast<int>(i)) {
        return absl::InvalidArgumentError(
            absl::StrCat("assembly: expected segment ", i, ", got segment ",
                         segments[i].segment_index()));
      }
      const auto slice = SliceNetwork(network, segments[i].first_layer(),
                                      segments[i].last_layer());
      const absl::StatusOr<SegmentModel> part =
          slice.ok() ? ModelFromWeights(segments[i], *slice)
                     : absl::StatusOr<SegmentModel>(slice.status());
      if (!part.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "assembly: segment ", i, ": ", part.status().message()));
      }
      parts.push_back(*part);
    }
    if (!parts.empty() &&
        (parts.front()->first_layer() != 1 ||
         parts.back()->last_layer() != network.last_layer())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "assembly: the segments cover layers ", parts.front()->first_layer(),
          "..", parts.back()->last_layer(), ", the network has layers 1..",
          network.last_layer()));
    }
    return JoinSegments(parts);
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat("assembly: ", error.what()));
  }
}

}  // namespace pnn
