#include "common/precision.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"

namespace pnn {
namespace {

// PyTorch 2.4 replaced autocast's per-backend functions (set_enabled,
// set_cpu_enabled, ...) by ones that take the device type; the old ones
// are deprecated there and may be gone in later releases.
#if TORCH_VERSION_MAJOR > 2 || \
    (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool AutocastEnabled(bool cuda) {
  return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU);
}
void SetAutocast(bool cuda, bool enabled) {
  at::autocast::set_autocast_enabled(cuda ? at::kCUDA : at::kCPU, enabled);
}
at::ScalarType AutocastType(bool cuda) {
  return at::autocast::get_autocast_dtype(cuda ? at::kCUDA : at::kCPU);
}
void SetAutocastType(bool cuda, at::ScalarType type) {
  at::autocast::set_autocast_dtype(cuda ? at::kCUDA : at::kCPU, type);
}
#else
bool AutocastEnabled(bool cuda) {
  return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
void SetAutocast(bool cuda, bool enabled) {
  if (cuda) {
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_cpu_enabled(enabled);
  }
}
at::ScalarType AutocastType(bool cuda) {
  return cuda ? at::autocast::get_autocast_gpu_dtype()
              : at::autocast::get_autocast_cpu_dtype();
}
void SetAutocastType(bool cuda, at::ScalarType type) {
  if (cuda) {
    at::autocast::set_autocast_gpu_dtype(type);
  } else {
    at::autocast::set_autocast_cpu_dtype(type);
  }
}
#endif

}  // namespace

absl::Status CheckPrecision(pnn::v1::Precision precision, c10::Device device) {
  if (!pnn::v1::Precision_IsValid(precision)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown training precision ", precision));
  }
  if (!PrecisionFitsDevice(precision, device.str())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PRECISION_TF32 applies to CUDA devices only, this run trains on ",
        device.str(), "; use PRECISION_FP32 or PRECISION_BF16"));
  }
  return absl::OkStatus();
}

bool IsAutocastEnabled(c10::Device device) {
  return AutocastEnabled(device.is_cuda());
}

ForwardPrecision::ForwardPrecision(pnn::v1::Precision precision,
                                   c10::Device device) {
  if (precision != pnn::v1::PRECISION_BF16) return;
  active_ = true;
  cuda_ = device.is_cuda();
  was_enabled_ = AutocastEnabled(cuda_);
  previous_dtype_ = static_cast<int>(AutocastType(cuda_));
  SetAutocastType(cuda_, at::kBFloat16);
  SetAutocast(cuda_, true);
  at::autocast::increment_nesting();
}

ForwardPrecision::~ForwardPrecision() {
  if (!active_) return;
  // As torch.autocast's __exit__: the cache of casts lives as long as the
  // outermost scope.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocast(cuda_, was_enabled_);
  SetAutocastType(cuda_, static_cast<at::ScalarType>(previous_dtype_));
}

MatmulPrecision::MatmulPrecision(pnn::v1::Precision precision,
                                 c10::Device device) {
  if (precision != pnn::v1::PRECISION_TF32 || !device.is_cuda()) return;
  active_ = true;
  at::Context& context = at::globalContext();
  was_cublas_ = context.allowTF32CuBLAS();
  was_cudnn_ = context.allowTF32CuDNN();
  context.setAllowTF32CuBLAS(true);
  context.setAllowTF32CuDNN(true);
}

MatmulPrecision::~MatmulPrecision() {
  if (!active_) return;
  at::Context& context = at::globalContext();
  context.setAllowTF32CuBLAS(was_cublas_);
  context.setAllowTF32CuDNN(was_cudnn_);
}

}  // namespace pnn
