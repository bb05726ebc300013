#include "common/tensor_codec.h"

#include <ATen/ATen.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pnn {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "pnn.v1.Tensor is little-endian; add byte swapping here");

pnn::v1::Tensor TensorToProto(const std::string& name,
                              const at::Tensor& tensor) {
  const at::Tensor cpu =
      tensor.detach().to(at::kCPU, at::kFloat).contiguous();
  pnn::v1::Tensor proto;
  proto.set_name(name);
  for (int64_t dim : cpu.sizes()) proto.add_shape(dim);
  proto.set_data(cpu.data_ptr(), cpu.numel() * sizeof(float));
  return proto;
}

absl::StatusOr<at::Tensor> TensorFromProto(const pnn::v1::Tensor& proto) {
  std::vector<int64_t> shape;
  int64_t elements = 1;
  for (int64_t dim : proto.shape()) {
    if (dim < 0 || (dim > 0 && elements > (int64_t{1} << 40) / dim)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", proto.name(), "\": invalid shape [",
          absl::StrJoin(proto.shape(), ", "), "]"));
    }
    elements *= dim;
    shape.push_back(dim);
  }
  if (static_cast<int64_t>(proto.data().size()) !=
      elements * static_cast<int64_t>(sizeof(float))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", proto.name(), "\": shape [",
        absl::StrJoin(proto.shape(), ", "), "] needs ",
        elements * sizeof(float), " bytes of float32 data, got ",
        proto.data().size()));
  }
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  if (elements > 0) {
    std::memcpy(tensor.data_ptr(), proto.data().data(), proto.data().size());
  }
  return tensor;
}

}  // namespace pnn
