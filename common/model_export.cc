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

absl::StatusOr<std::string> SequentialKey(absl::string_view pnn_name) {
  constexpr absl::string_view kPrefix = "linear";
  const size_t dot = pnn_name.find('.');
  int layer = 0;
  if (absl::StartsWith(pnn_name, kPrefix) && dot != absl::string_view::npos &&
      absl::SimpleAtoi(pnn_name.substr(kPrefix.size(), dot - kPrefix.size()),
                       &layer) &&
      layer >= 1) {
    const absl::string_view kind = pnn_name.substr(dot + 1);
    if (kind == "weight" || kind == "bias") {
      return absl::StrCat(2 * (layer - 1), ".", kind);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("model export: tensor \"", pnn_name,
                   "\" is not named linear<L>.weight or linear<L>.bias"));
}

std::map<std::string, std::string> ModelMetadata(const ModelExportInfo& info) {
  const pnn::v1::DatasetSpec& dataset = info.spec.dataset();
  return {
      {"format", "pt"},  // the convention of safetensors' torch writer
      {"pnn_format_version", kModelFormatVersion},
      {"job_id", info.job_id},
      {"job_spec", SpecJson(info.spec)},
      {"widths", absl::StrJoin(info.widths, ",")},
      {"activation", ActivationName(info.spec.model().activation())},
      {"num_classes", absl::StrCat(info.num_classes)},
      {"input_width", absl::StrCat(info.widths.empty() ? 0 : info.widths[0])},
      {"image_rows", absl::StrCat(info.image_rows)},
      {"image_cols", absl::StrCat(info.image_cols)},
      {"input_transpose", info.transpose ? "true" : "false"},
      {"input_scaling",
       "x = float32(pixel) / 255 for each uint8 pixel of the IDX image, "
       "the rows x cols image flattened row-major (transposed first when "
       "input_transpose is true); no mean or std normalisation"},
      {"dataset", dataset.path()},
      {"dataset_emnist_split", dataset.emnist_split()},
      {"train_limit", absl::StrCat(dataset.train_limit())},
      {"test_limit", absl::StrCat(dataset.test_limit())},
      {"layout",
       "torch.nn.Sequential: Linear at even indices 0, 2, ..., the "
       "activation after every Linear but the last; <i>.weight is [out, in], "
       "y = x W^T + b; the output is logits (argmax = class, no softmax)"},
  };
}

absl::StatusOr<std::string> EncodeModelSafetensors(
    const pnn::v1::SegmentWeights& joined, const ModelExportInfo& info) {
  pnn::v1::SegmentWeights renamed = joined;
  for (pnn::v1::Tensor& tensor : *renamed.mutable_tensors()) {
    PNN_ASSIGN_OR_RETURN(std::string key, SequentialKey(tensor.name()));
    tensor.set_name(std::move(key));
  }
  return EncodeSafetensors(renamed, ModelMetadata(info));
}

}  // namespace pnn
