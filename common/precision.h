// The arithmetic a training run asks for (TrainingConfig.precision), applied
// as scopes: bf16 autocast around forward passes, TF32 matrix units for a
// whole run. Weights, gradients and optimizer state stay fp32 in every mode.
//
// Thread safety: autocast is per thread (enter ForwardPrecision on the
// thread that runs the forward pass); the TF32 switch is process-wide, so a
// process should train one run at a time on a device (a pnn worker does).
#ifndef PNN_COMMON_PRECISION_H_
#define PNN_COMMON_PRECISION_H_

#include <c10/core/Device.h>

#include "absl/status/status.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// OK when `precision` can run on `device`; FAILED_PRECONDITION for TF32 off
// CUDA (it would silently train in fp32), INVALID_ARGUMENT for an unknown
// value.
absl::Status CheckPrecision(pnn::v1::Precision precision, c10::Device device);

// Whether autocast is on for `device`'s kind on this thread (for checks).
bool IsAutocastEnabled(c10::Device device);

// While alive, this thread's forward passes on `device` run under bf16
// autocast when `precision` is PRECISION_BF16 (matrix products and
// convolutions in bf16, reductions and losses in fp32); otherwise it does
// nothing. Leaving the outermost scope drops autocast's cast weights, which
// would be stale after the next optimizer step.
class ForwardPrecision {
 public:
  ForwardPrecision(pnn::v1::Precision precision, c10::Device device);
  ~ForwardPrecision();
  ForwardPrecision(const ForwardPrecision&) = delete;
  ForwardPrecision& operator=(const ForwardPrecision&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  int previous_dtype_ = 0;  // at::ScalarType, kept out of this header
};

// While alive, CUDA matrix products and convolutions use TF32 when
// `precision` is PRECISION_TF32 and the device is CUDA; the previous
// process-wide setting comes back at destruction.
class MatmulPrecision {
 public:
  MatmulPrecision(pnn::v1::Precision precision, c10::Device device);
  ~MatmulPrecision();
  MatmulPrecision(const MatmulPrecision&) = delete;
  MatmulPrecision& operator=(const MatmulPrecision&) = delete;

 private:
  bool active_ = false;
  bool was_cublas_ = false;
  bool was_cudnn_ = false;
};

}  // namespace pnn

#endif  // PNN_COMMON_PRECISION_H_
