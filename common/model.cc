#include "common/model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/activation.h>

#include <cmath>
#include <exception>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"

namespace pnn {
namespace {

std::string ParameterName(int layer, const char* kind) {
  return absl::StrCat("linear", layer, ".", kind);
}

// Deterministic per-layer seed (splitmix64 of seed and layer).
uint64_t LayerSeed(uint64_t seed, int layer) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (static_cast<uint64_t>(layer) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

MlpSegmentImpl::MlpSegmentImpl(int first_layer, std::vector<int> widths,
                               pnn::v1::Activation activation)
    : first_layer_(first_layer),
      widths_(std::move(widths)),
      activation_(activation) {
  for (size_t i = 0; i + 1 < widths_.size(); ++i) {
    const int layer = first_layer_ + static_cast<int>(i);
    linears_.push_back(register_module(
        absl::StrCat("linear", layer),
        torch::nn::Linear(widths_[i], widths_[i + 1])));
  }
}

at::Tensor MlpSegmentImpl::Activate(const at::Tensor& x) const {
  switch (activation_) {
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

at::Tensor MlpSegmentImpl::forward(at::Tensor x) {
  // A segment after a cut starts with the activation its predecessor's last
  // layer would have applied in the whole network.
  if (first_layer_ > 1) x = Activate(x);
  for (size_t i = 0; i < linears_.size(); ++i) {
    x = linears_[i]->forward(x);
    if (i + 1 < linears_.size()) x = Activate(x);
  }
  return x;
}

void InitializeWeights(MlpSegment& model, uint64_t seed) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < model->linears().size(); ++i) {
    const auto& linear = model->linears()[i];
    auto generator = at::detail::createCPUGenerator(
        LayerSeed(seed, model->first_layer() + static_cast<int>(i)));
    const double bound = 1.0 / std::sqrt(static_cast<double>(
                                   linear->weight.size(1)));
    // Draw on the CPU so the values do not depend on the device.
    at::Tensor weight = at::empty(linear->weight.sizes(), at::kFloat);
    weight.uniform_(-bound, bound, generator);
    at::Tensor bias = at::empty(linear->bias.sizes(), at::kFloat);
    bias.uniform_(-bound, bound, generator);
    linear->weight.copy_(weight);
    linear->bias.copy_(bias);
  }
}

pnn::v1::SegmentWeights ExportWeights(const MlpSegment& model,
                                      int segment_index) {
  pnn::v1::SegmentWeights weights;
  weights.set_segment_index(segment_index);
  weights.set_first_layer(model->first_layer());
  weights.set_last_layer(model->last_layer());
  for (size_t i = 0; i < model->linears().size(); ++i) {
    const int layer = model->first_layer() + static_cast<int>(i);
    const auto& linear = model->linears()[i];
    *weights.add_tensors() =
        TensorToProto(ParameterName(layer, "weight"), linear->weight);
    *weights.add_tensors() =
        TensorToProto(ParameterName(layer, "bias"), linear->bias);
  }
  return weights;
}

absl::Status ImportWeights(const pnn::v1::SegmentWeights& weights,
                           MlpSegment& model) {
  absl::flat_hash_map<std::string, const pnn::v1::Tensor*> by_name;
  for (const auto& tensor : weights.tensors()) {
    if (!by_name.emplace(tensor.name(), &tensor).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights: tensor \"", tensor.name(), "\" appears twice"));
    }
  }
  if (by_name.size() != 2 * model->linears().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights: expected ", 2 * model->linears().size(),
        " tensors for linear layers ", model->first_layer(), "..",
        model->last_layer(), ", got ", by_name.size()));
  }
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < model->linears().size(); ++i) {
    const int layer = model->first_layer() + static_cast<int>(i);
    const auto& linear = model->linears()[i];
    for (const char* kind : {"weight", "bias"}) {
      const std::string name = ParameterName(layer, kind);
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("weights: tensor \"", name, "\" is missing"));
      }
      PNN_ASSIGN_OR_RETURN(at::Tensor value, TensorFromProto(*it->second));
      at::Tensor target =
          std::string(kind) == "weight" ? linear->weight : linear->bias;
      if (value.sizes() != target.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "weights: tensor \"", name, "\" has shape ",
            c10::str(value.sizes()), ", the model needs ",
            c10::str(target.sizes())));
      }
      if (!at::isfinite(value).all().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "weights: tensor \"", name, "\" contains NaN or Inf"));
      }
      target.copy_(value);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<MlpSegment> ModelFromWeights(
    const pnn::v1::SegmentWeights& weights, pnn::v1::Activation activation) {
  const int first = weights.first_layer();
  const int last = weights.last_layer();
  if (first < 1 || last < first || last - first > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights: invalid layer range ", first, "..", last));
  }
  std::vector<int> widths;
  for (int layer = first; layer <= last; ++layer) {
    const std::string name = ParameterName(layer, "weight");
    const pnn::v1::Tensor* found = nullptr;
    for (const auto& tensor : weights.tensors()) {
      if (tensor.name() == name) found = &tensor;
    }
    if (found == nullptr || found->shape_size() != 2 || found->shape(0) < 1 ||
        found->shape(1) < 1 || found->shape(0) > INT32_MAX ||
        found->shape(1) > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weights: tensor \"", name, "\" is missing or not a matrix"));
    }
    // The module below is allocated from the declared shapes: they must be
    // backed by the bytes actually received, so that a message cannot make
    // this process allocate more than it carries (a worker's result is
    // untrusted input).
    const int64_t elements = found->shape(0) * found->shape(1);  // < 2^62
    if (found->data().size() % sizeof(float) != 0 ||
        static_cast<int64_t>(found->data().size() / sizeof(float)) != elements) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weights: tensor \"", name, "\": shape [", found->shape(0), ", ",
          found->shape(1), "] does not match its ", found->data().size(),
          " bytes of float32 data"));
    }
    if (widths.empty()) widths.push_back(static_cast<int>(found->shape(1)));
    if (widths.back() != found->shape(1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weights: tensor \"", name, "\" takes ", found->shape(1),
          " inputs but the previous layer has ", widths.back(), " outputs"));
    }
    widths.push_back(static_cast<int>(found->shape(0)));
  }
  try {
    MlpSegment model(first, widths, activation);
    PNN_RETURN_IF_ERROR(ImportWeights(weights, model));
    return model;
  } catch (const std::exception& error) {  // e.g. out of memory
    return absl::ResourceExhaustedError(
        absl::StrCat("weights: cannot build the segment: ", error.what()));
  }
}

absl::StatusOr<MlpSegment> JoinSegments(const std::vector<MlpSegment>& parts) {
  if (parts.empty()) {
    return absl::InvalidArgumentError("JoinSegments: no segments");
  }
  std::vector<int> widths = parts.front()->widths();
  for (size_t i = 1; i < parts.size(); ++i) {
    const MlpSegment& previous = parts[i - 1];
    const MlpSegment& part = parts[i];
    if (part->first_layer() != previous->last_layer() + 1 ||
        part->widths().front() != previous->widths().back() ||
        part->activation() != previous->activation()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "JoinSegments: segment ", i, " (layers ", part->first_layer(), "..",
          part->last_layer(), ") does not continue segment ", i - 1,
          " (layers ", previous->first_layer(), "..", previous->last_layer(),
          ")"));
    }
    widths.insert(widths.end(), part->widths().begin() + 1,
                  part->widths().end());
  }
  MlpSegment joined(parts.front()->first_layer(), widths,
                    parts.front()->activation());
  at::NoGradGuard no_grad;
  size_t next = 0;
  for (const MlpSegment& part : parts) {
    for (const auto& linear : part->linears()) {
      joined->linears()[next]->weight.copy_(linear->weight);
      joined->linears()[next]->bias.copy_(linear->bias);
      ++next;
    }
  }
  return joined;
}

absl::StatusOr<MlpSegment> AssembleNetwork(
    const std::vector<pnn::v1::SegmentWeights>& segments,
    pnn::v1::Activation activation) {
  std::vector<MlpSegment> parts;
  try {
    for (size_t i = 0; i < segments.size(); ++i) {
      if (segments[i].segment_index() != static_cast<int>(i)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "assembly: expected segment ", i, ", got segment ",
            segments[i].segment_index()));
      }
      auto part = ModelFromWeights(segments[i], activation);
      if (!part.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "assembly: segment ", i, ": ", part.status().message()));
      }
      parts.push_back(*part);
    }
    return JoinSegments(parts);
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat("assembly: ", error.what()));
  }
}

}  // namespace pnn
