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

// Draws the SIL table of every cut: a [num_classes, width] float32 CPU
// tensor per entry of `cut_widths`. Deterministic in (spec, seed, cut
// index, width): the same job always gets the same tables. Errors when
// orthogonal rows are asked for a cut narrower than the class count.
absl::StatusOr<std::vector<at::Tensor>> DrawSilTables(
    const pnn::v1::SilSpec& spec, uint64_t seed, int num_classes,
    const std::vector<int>& cut_widths);

}  // namespace pnn

#endif  // PNN_COMMON_SIL_H_
