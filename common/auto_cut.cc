#include "common/auto_cut.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/accounting.h"
#include "common/job_spec.h"

namespace pnn {
namespace {

using pnn::v1::CutPlan;

// Predicted cost of the segment of layers [first, last] (1-based).
CutPlan::Segment Estimate(const Architecture& network, int first, int last,
                          const pnn::v1::TrainingConfig& training) {
  CutPlan::Segment estimate;
  estimate.set_first_layer(first);
  estimate.set_last_layer(last);
  const absl::StatusOr<Architecture> segment =
      SliceNetwork(network, first, last);
  if (!segment.ok()) return estimate;  // the network was validated
  const pnn::v1::TrainingCost cost = AnalyticTrainingCost(*segment, training);
  int64_t flops = cost.training_flops_per_sample();
  // AnalyticTrainingCost counts 3 x forward for every layer, but nothing
  // asks for the gradient of the data: the network's first layer costs 2 x
  // forward. Without this the cut chooser would load the last segment.
  if (first == 1) {
    const auto shapes = InferShapes(*segment);
    if (shapes.ok()) flops -= shapes->front().forward_flops;
  }
  estimate.set_training_flops_per_sample(flops);
  estimate.set_training_memory_bytes(
      cost.parameter_bytes() + cost.gradient_bytes() +
      cost.optimizer_state_bytes() + cost.activation_bytes());
  return estimate;
}

int64_t Objective(const CutPlan::Segment& segment, bool memory) {
  return memory ? segment.training_memory_bytes()
                : segment.training_flops_per_sample();
}

// Measured seconds of layers [first, last] (1-based).
double MeasuredSeconds(const LayerTimes& times, int first, int last) {
  double seconds = 0;
  for (int layer = first; layer <= last; ++layer) {
    seconds += times.seconds_per_batch[static_cast<size_t>(layer - 1)];
  }
  return seconds;
}

// The objective of every segment [first, last] (1-based, first <= last),
// computed once: the search looks each up many times. Measured times count
// in nanoseconds.
using CostTable = std::vector<std::vector<int64_t>>;

CostTable Costs(const Architecture& network, bool memory,
                const pnn::v1::TrainingConfig& training,
                const LayerTimes* times = nullptr) {
  const int layers = network.last_layer();
  CostTable costs(layers + 1, std::vector<int64_t>(layers + 1, 0));
  for (int first = 1; first <= layers; ++first) {
    for (int last = first; last <= layers; ++last) {
      costs[first][last] =
          times != nullptr
              ? static_cast<int64_t>(1e9 * MeasuredSeconds(*times, first, last))
              : Objective(Estimate(network, first, last, training), memory);
    }
  }
  return costs;
}

// The cuts of the table's layers into `segments` parts that minimise the
// largest part's objective (dynamic programming over prefixes: best[k][i]
// is the least largest cost of the first i layers in k parts).
std::vector<int> Balance(const CostTable& costs, int segments) {
  const int layers = static_cast<int>(costs.size()) - 1;
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::vector<std::vector<int64_t>> best(
      segments + 1, std::vector<int64_t>(layers + 1, kNone));
  std::vector<std::vector<int>> from(segments + 1,
                                     std::vector<int>(layers + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= segments; ++k) {
    for (int i = k; i <= layers; ++i) {
      for (int j = k - 1; j < i; ++j) {
        if (best[k - 1][j] == kNone) continue;
        const int64_t cost = std::max(best[k - 1][j], costs[j + 1][i]);
        if (cost < best[k][i]) {
          best[k][i] = cost;
          from[k][i] = j;
        }
      }
    }
  }
  std::vector<int> cuts;
  for (int k = segments, i = layers; k > 1; --k) {
    i = from[k][i];
    cuts.push_back(i);
  }
  std::reverse(cuts.begin(), cuts.end());
  return cuts;
}

CutPlan PlanFor(const Architecture& network, const std::vector<int>& cuts,
                const pnn::v1::TrainingConfig& training,
                const LayerTimes* times = nullptr) {
  CutPlan plan;
  std::vector<int> lasts = cuts;
  lasts.push_back(network.last_layer());
  int first = 1;
  for (int last : lasts) {
    if (last != network.last_layer()) plan.add_cut_after_layers(last);
    CutPlan::Segment* segment = plan.add_segments();
    *segment = Estimate(network, first, last, training);
    if (times != nullptr) {
      segment->set_measured_seconds_per_batch(
          MeasuredSeconds(*times, first, last));
    }
    first = last + 1;
  }
  if (times != nullptr) plan.set_profiled_on(times->profiled_on);
  return plan;
}

int64_t Largest(const CutPlan& plan, bool memory) {
  int64_t largest = 0;
  for (const auto& segment : plan.segments()) {
    largest = std::max(largest, Objective(segment, memory));
  }
  return largest;
}

}  // namespace

bool NeedsLayerTimes(const pnn::v1::JobSpec& resolved) {
  return resolved.has_auto_cut() &&
         resolved.auto_cut().objective() ==
             pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME;
}

absl::StatusOr<CutPlan> ChooseCuts(const pnn::v1::JobSpec& resolved,
                                   const Architecture& network,
                                   const LayerTimes* times) {
  const pnn::v1::AutoCutSpec& request = resolved.auto_cut();
  const pnn::v1::TrainingConfig& training = resolved.training();
  const int layers = network.last_layer();
  if (times != nullptr &&
      static_cast<int>(times->seconds_per_batch.size()) != layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("measured layer times: ", times->seconds_per_batch.size(),
                     " for a network of ", layers, " layers"));
  }
  if (NeedsLayerTimes(resolved) && times == nullptr) {
    return absl::FailedPreconditionError(
        "auto_cut.objective BALANCE_OBJECTIVE_MEASURED_TIME needs the "
        "layers' measured times (a profiling pass) before choosing cuts");
  }
  CutPlan plan;
  if (request.device_memory_bytes() == 0) {
    const bool memory =
        request.objective() == pnn::v1::BALANCE_OBJECTIVE_TRAINING_MEMORY;
    const LayerTimes* balanced = NeedsLayerTimes(resolved) ? times : nullptr;
    const CostTable costs = Costs(network, memory, training, balanced);
    plan =
        PlanFor(network, Balance(costs, request.segments()), training, times);
  } else {
    // The fewest segments that fit; the least largest segment over every
    // count is the smallest budget that could work.
    const CostTable costs = Costs(network, /*memory=*/true, training);
    int64_t smallest = std::numeric_limits<int64_t>::max();
    bool found = false;
    for (int segments = 2; segments <= layers && !found; ++segments) {
      plan = PlanFor(network, Balance(costs, segments), training);
      const int64_t largest = Largest(plan, true);
      smallest = std::min(smallest, largest);
      found = largest <= request.device_memory_bytes();
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "auto_cut.device_memory_bytes: ", request.device_memory_bytes(),
          " bytes per device cannot hold any segment split of this model "
          "(training memory: parameters, gradients, optimizer state and a "
          "batch of ",
          training.batch_size(),
          " rows' activations); the smallest budget that would work is ",
          smallest, " bytes, or lower training.batch_size"));
    }
  }
  *plan.mutable_request() = request;
  return plan;
}

absl::StatusOr<CutPlan> ApplyAutoCut(pnn::v1::JobSpec* resolved,
                                     const ImageShape& image, int num_classes,
                                     const LayerTimes* times) {
  if (!resolved->has_auto_cut()) return CutPlan();
  auto network = NetworkArchitecture(*resolved, image, num_classes);
  if (!network.ok()) return network.status();
  auto plan = ChooseCuts(*resolved, *network, times);
  if (!plan.ok()) return plan.status();
  auto* cuts = resolved->mutable_model()->mutable_cut_after_layers();
  cuts->Clear();
  for (int cut : plan->cut_after_layers()) cuts->Add(cut);
  resolved->clear_auto_cut();
  if (resolved->parallelism() == pnn::v1::PARALLELISM_MODEL_PARALLEL &&
      resolved->pipeline().micro_batches() == 0) {
    // Resolving ran before the stage count was known.
    resolved->mutable_pipeline()->set_micro_batches(
        std::min(4 * (cuts->size() + 1), resolved->training().batch_size()));
  }
  return plan;
}

}  // namespace pnn
