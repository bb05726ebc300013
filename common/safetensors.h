// Export of trained weights as a .safetensors file, the format PyTorch,
// JAX and other tools read without pnn (`safetensors.torch.load_file`).
// Free of libtorch.
#ifndef PNN_COMMON_SAFETENSORS_H_
#define PNN_COMMON_SAFETENSORS_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// Serialises `weights` (float32 tensors, names kept, e.g. "linear1.weight")
// with string `metadata` into safetensors bytes: an 8-byte little-endian
// header length, a JSON header with dtype F32, shape and data offsets, and
// the tensors' bytes. Errors on tensors whose data size does not match.
absl::StatusOr<std::string> EncodeSafetensors(
    const pnn::v1::SegmentWeights& weights,
    const std::map<std::string, std::string>& metadata);

// Parses safetensors bytes back into named float32 tensors (for tests and
// for loading exported models); only F32 tensors are supported.
absl::StatusOr<pnn::v1::SegmentWeights> DecodeSafetensors(
    const std::string& bytes);

}  // namespace pnn

#endif  // PNN_COMMON_SAFETENSORS_H_
