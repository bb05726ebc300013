// Cut points chosen by pnn (JobSpec.auto_cut): the cuts that minimise the
// largest segment's training FLOPs or training memory for a number of
// segments, or the fewest segments whose largest fits a per-device memory
// budget. Costs are the analytic ones (common/accounting.h), so the choice
// needs the data set's shape but no libtorch. Pure functions.
#ifndef PNN_COMMON_AUTO_CUT_H_
#define PNN_COMMON_AUTO_CUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// Each layer's measured seconds per training batch (common/layer_profile.h),
// layer i + 1 at index i, and where they were measured.
struct LayerTimes {
  std::vector<double> seconds_per_batch;
  std::string profiled_on;  // for people: "worker w-1 (cuda:0, 1 thread)"
};

// Chooses the cuts for `resolved` (auto_cut set, no cut points) on
// `network` (NetworkArchitecture).
// Returns the plan: the request, the cuts and each segment's predicted
// training FLOPs per sample and training memory (and, given `times`, its
// measured seconds per batch). Ties go to the cuts found first (the
// earliest). INVALID_ARGUMENT when no split into 2 or more segments fits
// auto_cut.device_memory_bytes, saying the smallest budget that would
// work. BALANCE_OBJECTIVE_MEASURED_TIME needs `times` (one per layer of
// the network); FAILED_PRECONDITION without them.
absl::StatusOr<pnn::v1::CutPlan> ChooseCuts(const pnn::v1::JobSpec& resolved,
                                            const Architecture& network,
                                            const LayerTimes* times = nullptr);

// Whether `resolved` asks for cuts balanced by measured time, i.e. needs
// LayerTimes before ApplyAutoCut.
bool NeedsLayerTimes(const pnn::v1::JobSpec& resolved);

// For a spec with auto_cut: ChooseCuts, then the cuts go into
// spec->model().cut_after_layers and auto_cut is cleared (it stays in the
// plan), so the spec reads like one with explicit cuts. A spec without
// auto_cut is left alone and gets an empty plan.
absl::StatusOr<pnn::v1::CutPlan> ApplyAutoCut(
    pnn::v1::JobSpec* resolved, const ImageShape& image, int num_classes,
    const LayerTimes* times = nullptr);

}  // namespace pnn

#endif  // PNN_COMMON_AUTO_CUT_H_
