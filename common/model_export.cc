#include "common/model_export.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace pnn {
namespace {

std::string ActivationName(pnn::v1::Activation activation) {
  switch (activation) {
    case pnn::v1::ACTIVATION_TANH:
      return "tanh";
    case pnn::v1::ACTIVATION_GELU:
      return "gelu";
    case pnn::v1::ACTIVATION_SIGMOID:
      return "sigmoid";
    default:
      return "relu";  // ACTIVATION_UNSPECIFIED means ReLU
  }
}

std::string SpecJson(const pnn::v1::JobSpec& spec) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(spec, &json, options).ok()) {
    return "{}";
  }
  return json;
}

}  // namespace

absl::StatusOr<std::string> SequentialKey(const Architecture& network,
                                          absl::string_view pnn_name) {
  const size_t dot = pnn_name.find('.');
  const absl::string_view kind =
      dot == absl::string_view::npos ? "" : pnn_name.substr(dot + 1);
  int module = 0;
  const size_t count = network.layers.size();
  for (size_t i = 0; i < count; ++i) {
    const pnn::v1::LayerSpec& layer = network.layers[i];
    const int index = network.first_layer + static_cast<int>(i);
    if (IsWeighted(layer) && (kind == "weight" || kind == "bias") &&
        pnn_name.substr(0, dot) == ParameterPrefix(layer, index)) {
      return absl::StrCat(module, ".", kind);
    }
    module += IsWeighted(layer) && i + 1 < count ? 2 : 1;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "model export: tensor \"", pnn_name,
      "\" is not the weight or bias of a layer of the network"));
}

std::string SequentialModulesJson(const Architecture& network) {
  static const char* const kActivationModules[] = {"ReLU", "ReLU", "Tanh",
                                                   "GELU", "Sigmoid"};
  const int activation = static_cast<int>(network.activation);
  const std::string activation_module = absl::StrCat(
      R"({"type": ")",
      kActivationModules[activation >= 0 && activation <= 4 ? activation : 0],
      R"("})");
  std::vector<std::string> modules;
  const auto shapes = InferShapes(network);
  const size_t count = network.layers.size();
  for (size_t i = 0; shapes.ok() && i < count; ++i) {
    const pnn::v1::LayerSpec& layer = network.layers[i];
    const SampleShape& in = (*shapes)[i].input;
    if (layer.has_conv2d()) {
      const auto& conv = layer.conv2d();
      modules.push_back(absl::StrCat(
          R"({"type": "Conv2d", "in_channels": )", in[0],
          R"(, "out_channels": )", conv.out_channels(), R"(, "kernel_size": )",
          conv.kernel(), R"(, "stride": )", conv.stride(), R"(, "padding": )",
          conv.padding(), "}"));
    } else if (layer.has_max_pool() || layer.has_avg_pool()) {
      const auto& pool = layer.has_max_pool() ? layer.max_pool()
                                              : layer.avg_pool();
      modules.push_back(absl::StrCat(
          R"({"type": ")", layer.has_max_pool() ? "MaxPool2d" : "AvgPool2d",
          R"(", "kernel_size": )", pool.kernel(), R"(, "stride": )",
          pool.stride(), R"(, "padding": )", pool.padding(), "}"));
    } else if (layer.has_flatten()) {
      modules.push_back(R"({"type": "Flatten"})");
    } else if (layer.has_linear()) {
      modules.push_back(absl::StrCat(
          R"({"type": "Linear", "in_features": )", in[0],
          R"(, "out_features": )", layer.linear().out_features(), "}"));
    } else if (layer.has_dropout()) {
      modules.push_back(absl::StrCat(R"({"type": "Dropout", "p": )",
                                     layer.dropout().p(), "}"));
    }
    if (IsWeighted(layer) && i + 1 < count) {
      modules.push_back(activation_module);
    }
  }
  return absl::StrCat("[", absl::StrJoin(modules, ", "), "]");
}

namespace {

// "input, hidden..., classes" of a fully connected network; empty for a
// layer list.
std::string FullyConnectedWidths(const ModelExportInfo& info) {
  if (!info.spec.model().layers().empty()) return "";
  std::vector<int64_t> widths = {Elements(info.network.input_shape)};
  for (const auto& layer : info.network.layers) {
    widths.push_back(layer.linear().out_features());
  }
  return absl::StrJoin(widths, ",");
}

}  // namespace

std::map<std::string, std::string> ModelMetadata(const ModelExportInfo& info) {
  const pnn::v1::DatasetSpec& dataset = info.spec.dataset();
  return {
      {"format", "pt"},  // the convention of safetensors' torch writer
      {"pnn_format_version", kModelFormatVersion},
      {"job_id", info.job_id},
      {"job_spec", SpecJson(info.spec)},
      {"modules", SequentialModulesJson(info.network)},
      {"input_shape", absl::StrJoin(info.network.input_shape, ",")},
      {"widths", FullyConnectedWidths(info)},
      {"activation", ActivationName(info.spec.model().activation())},
      {"num_classes", absl::StrCat(info.num_classes)},
      {"input_width", absl::StrCat(Elements(info.network.input_shape))},
      {"image_channels", absl::StrCat(info.image_channels)},
      {"image_rows", absl::StrCat(info.image_rows)},
      {"image_cols", absl::StrCat(info.image_cols)},
      {"input_transpose", info.transpose ? "true" : "false"},
      {"input_scaling",
       "x = float32(pixel) / 255 for each uint8 pixel of the IDX image "
       "([channels,] rows, cols; rows and cols swapped first when "
       "input_transpose is true), reshaped to [batch, input_shape] "
       "(flattened row-major when input_shape is one number); no mean or "
       "std normalisation"},
      {"dataset", dataset.path()},
      {"dataset_emnist_split", dataset.emnist_split()},
      {"train_limit", absl::StrCat(dataset.train_limit())},
      {"test_limit", absl::StrCat(dataset.test_limit())},
      {"layout",
       "torch.nn.Sequential of `modules` in order (the activation after "
       "every Conv2d and Linear but the last module); <i>.weight and "
       "<i>.bias are module i's; the output is logits (argmax = class, no "
       "softmax); call eval() before testing (Dropout)"},
  };
}

absl::StatusOr<std::string> EncodeModelSafetensors(
    const pnn::v1::SegmentWeights& joined, const ModelExportInfo& info) {
  pnn::v1::SegmentWeights renamed = joined;
  for (pnn::v1::Tensor& tensor : *renamed.mutable_tensors()) {
    PNN_ASSIGN_OR_RETURN(std::string key,
                         SequentialKey(info.network, tensor.name()));
    tensor.set_name(std::move(key));
  }
  return EncodeSafetensors(renamed, ModelMetadata(info));
}

}  // namespace pnn
