// Turning a job into independent segment tasks: the part of a job's life
// that pnn-train and the coordinator share. Free of libtorch (joining the
// trained segments is AssembleNetwork, common/model.h).
#ifndef PNN_COMMON_PARTITION_H_
#define PNN_COMMON_PARTITION_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// Cuts the resolved spec's network on images of `image` (NetworkArchitecture),
// draws the SIL tables and returns one self-contained task per segment.
// In the synthetic-labels mode each task carries only the SIL tables of its
// own cuts: no task refers to another segment, so all can train at once.
// In the previous-outputs mode, tasks after the first carry the layers
// before them (task.upstream's layers) and need AttachUpstream with the
// earlier segments' results before they can run. A conventional
// job is one task for the whole network; a model-parallel job has one
// pipeline stage per segment (task.pipeline set, no SIL), whose
// downstream addresses the scheduler fills in.
absl::StatusOr<std::vector<pnn::v1::SegmentTask>> PlanSegmentTasks(
    const pnn::v1::JobSpec& resolved, const ImageShape& image,
    int num_classes, const std::string& job_id);

// True when `task` still waits for upstream segments' weights.
bool NeedsUpstream(const pnn::v1::SegmentTask& task);

// Fills `task`'s upstream from the weights of segments 0..index-1, which
// must all be present in `finished` (indexed by segment).
absl::Status AttachUpstream(
    const std::vector<pnn::v1::SegmentWeights>& finished,
    pnn::v1::SegmentTask* task);

}  // namespace pnn

#endif  // PNN_COMMON_PARTITION_H_
