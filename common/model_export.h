// The model file users take away: the joined network as safetensors with
// the keys of a plain `torch.nn.Sequential` (every layer a module, the
// activation a module after each weighted layer but the last: for a fully
// connected network Linear, activation, Linear, ..., so linear layer L is
// module 2 * (L - 1)) and, in `__metadata__`, everything needed to build
// and run it without pnn (the modules, input shape and scaling, class
// count, data set, job id and spec). Free of libtorch;
// examples/load_model.py is the reference reader.
#ifndef PNN_COMMON_MODEL_EXPORT_H_
#define PNN_COMMON_MODEL_EXPORT_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// Version of the metadata layout below (`pnn_format_version`); raise it
// when a key changes meaning.
inline constexpr char kModelFormatVersion[] = "1";

struct ModelExportInfo {
  std::string job_id;
  pnn::v1::JobSpec spec;  // resolved (defaults filled in)
  Architecture network;   // the whole network (NetworkArchitecture)
  int num_classes = 0;
  int image_channels = 1;
  int image_rows = 0;  // as the network sees them (after any transpose)
  int image_cols = 0;
  bool transpose = false;  // images were transposed on reading (EMNIST)
};

// pnn's parameter name in `network` -> the nn.Sequential key:
// "linear<L>.weight" -> "<module index>.weight" (likewise conv and
// ".bias"). INVALID_ARGUMENT for a name of no weighted layer.
absl::StatusOr<std::string> SequentialKey(const Architecture& network,
                                          absl::string_view pnn_name);

// The nn.Sequential's modules as a JSON list, one object per module:
// {"type": "Conv2d", "in_channels", "out_channels", "kernel_size",
// "stride", "padding"}, {"type": "MaxPool2d" | "AvgPool2d", "kernel_size",
// "stride", "padding"}, {"type": "Flatten"}, {"type": "Linear",
// "in_features", "out_features"}, {"type": "Dropout", "p"}, {"type":
// "ReLU" | "Tanh" | "GELU" | "Sigmoid"}.
std::string SequentialModulesJson(const Architecture& network);

// The string metadata recorded with the model (safetensors allows only
// strings). Keys: format ("pt"), pnn_format_version, job_id, job_spec
// (protobuf JSON), modules (SequentialModulesJson), input_shape ("784" or
// "1,28,28": each sample's shape the first module takes), widths (fully
// connected networks only: input, hidden..., classes), activation (relu,
// tanh, gelu, sigmoid), num_classes, input_width, image_channels,
// image_rows, image_cols, input_transpose, input_scaling, dataset,
// dataset_emnist_split, train_limit, test_limit, layout.
std::map<std::string, std::string> ModelMetadata(const ModelExportInfo& info);

// Safetensors bytes of the joined weights (pnn's "linear<L>" names) under
// nn.Sequential keys, with ModelMetadata(info).
absl::StatusOr<std::string> EncodeModelSafetensors(
    const pnn::v1::SegmentWeights& joined, const ModelExportInfo& info);

}  // namespace pnn

#endif  // PNN_COMMON_MODEL_EXPORT_H_
