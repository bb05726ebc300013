// pnn-train's job: conventional training and partitioned training of the
// same spec on the same data in this process, evaluated after every epoch,
// reported side by side. Segments run one after another here; the services
// run them on separate workers at the same time.
#ifndef PNN_COMMON_COMPARISON_H_
#define PNN_COMMON_COMPARISON_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "common/dataset.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/report.pb.h"

namespace pnn {

struct ComparisonOptions {
  int threads = 0;  // intra-op threads (0: torch's default)
  bool run_conventional = true;
  bool run_partitioned = true;
  // Human-readable progress lines ("[segment 1/2] epoch 3/5 ..."), from the
  // calling thread; `transient` lines may be overwritten by the next one.
  std::function<void(const std::string& line, bool transient)> progress;
};

// Runs the comparison for a resolved spec on a loaded data set. Fails with
// the first error of any stage (validation, training, evaluation).
absl::StatusOr<pnn::v1::ComparisonReport> RunComparison(
    const pnn::v1::JobSpec& resolved, const Dataset& data,
    const ComparisonOptions& options);

}  // namespace pnn

#endif  // PNN_COMMON_COMPARISON_H_
