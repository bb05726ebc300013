// Conversion between torch tensors and pnn.v1.Tensor (float32,
// little-endian, row-major), the only tensor format on pnn's wire.
#ifndef PNN_COMMON_TENSOR_CODEC_H_
#define PNN_COMMON_TENSOR_CODEC_H_

#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// Copies `tensor` (any device, any floating dtype) into a float32 message.
pnn::v1::Tensor TensorToProto(const std::string& name,
                              const at::Tensor& tensor);

// Decodes a message into a new CPU float32 tensor. Rejects negative or
// overflowing shapes and a payload whose size does not match the shape.
absl::StatusOr<at::Tensor> TensorFromProto(const pnn::v1::Tensor& proto);

}  // namespace pnn

#endif  // PNN_COMMON_TENSOR_CODEC_H_
