// Synthetic intermediate labels: for every cut, one fixed vector per class,
// drawn from the job's seed before any training starts.
#ifndef PNN_COMMON_SIL_H_
#define PNN_COMMON_SIL_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// Draws the SIL table of every cut: a [num_classes, ...shape] float32 CPU
// tensor per entry of `cut_shapes` (the per-sample shape of the cut's
// activation: [width], or [channels, height, width] at a convolutional
// cut). The distribution applies element-wise; orthogonal rows are
// orthogonal over the flattened shape. Deterministic in (spec, seed, cut
// index, shape): the same job always gets the same tables. Errors when
// orthogonal rows are asked for a cut of fewer elements than classes.
absl::StatusOr<std::vector<at::Tensor>> DrawSilTables(
    const pnn::v1::SilSpec& spec, uint64_t seed, int num_classes,
    const std::vector<std::vector<int64_t>>& cut_shapes);

}  // namespace pnn

#endif  // PNN_COMMON_SIL_H_
