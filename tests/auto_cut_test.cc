// Cut points chosen by pnn (JobSpec.auto_cut): balance by FLOPs or memory,
// the fewest segments under a memory budget, and an unfittable model
// refused with the budget that would work.
#include "common/auto_cut.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr ImageShape kImage{1, 28, 28};

// The paper's network, 784-256x5-10, with `auto_cut` as JSON.
pnn::v1::JobSpec Resolved(const std::string& auto_cut,
                          const std::string& extra = "") {
  auto spec =
      ParseJobSpecJson(absl::StrCat(R"({"auto_cut": )", auto_cut, extra, "}"));
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto resolved = ResolveJobSpec(*spec);
  EXPECT_TRUE(resolved.ok()) << resolved.status();
  return resolved.ok() ? *resolved : pnn::v1::JobSpec();
}

TEST(AutoCutTest, FlopsBalanceCountsTheFirstLayerWithoutItsInputGradient) {
  pnn::v1::JobSpec spec = Resolved(R"({"segments": 2})");
  EXPECT_TRUE(spec.model().cut_after_layers().empty());
  auto plan = ApplyAutoCut(&spec, kImage, 10);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Layer 1 (784x256, 2 x forward) and layer 2 (256x256, 3 x forward):
  // 1.20 MFLOPs against layers 3-6's 1.20 MFLOPs. The default cut (after
  // layer 3) would put 1.59 of 2.39 MFLOPs in segment 1.
  EXPECT_THAT(plan->cut_after_layers(), ElementsAre(2));
  EXPECT_THAT(spec.model().cut_after_layers(), ElementsAre(2));
  EXPECT_FALSE(spec.has_auto_cut());
  ASSERT_EQ(plan->segments_size(), 2);
  EXPECT_EQ(plan->segments(0).training_flops_per_sample(),
            2 * 2 * 784 * 256 + 3 * 2 * 256 * 256);
  EXPECT_EQ(plan->segments(1).training_flops_per_sample(),
            3 * 2 * (3 * 256 * 256 + 256 * 10));
  EXPECT_EQ(plan->segments(1).first_layer(), 3);
  EXPECT_EQ(plan->segments(1).last_layer(), 6);
  EXPECT_GT(plan->segments(0).training_memory_bytes(), 0);
  EXPECT_EQ(plan->request().segments(), 2);
}

TEST(AutoCutTest, MoreSegmentsAndTheMemoryObjective) {
  pnn::v1::JobSpec spec = Resolved(
      R"({"segments": 3, "objective": "BALANCE_OBJECTIVE_TRAINING_MEMORY"})");
  auto plan = ApplyAutoCut(&spec, kImage, 10);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->cut_after_layers_size(), 2);
  // The 784-wide layer alone outweighs any two 256-wide ones.
  EXPECT_EQ(plan->cut_after_layers(0), 1);
  int64_t largest = 0;
  for (const auto& segment : plan->segments()) {
    largest = std::max(largest, segment.training_memory_bytes());
  }
  EXPECT_EQ(largest, plan->segments(0).training_memory_bytes());
}

TEST(AutoCutTest, ABudgetGetsTheFewestSegmentsThatFit) {
  // Whole network: ~8.8 MiB; split in two, the larger half ~5 MiB.
  pnn::v1::JobSpec two = Resolved(R"({"device_memory_bytes": 6000000})");
  auto plan = ApplyAutoCut(&two, kImage, 10);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->segments_size(), 2);
  for (const auto& segment : plan->segments()) {
    EXPECT_LE(segment.training_memory_bytes(), 6000000);
  }
  pnn::v1::JobSpec more = Resolved(R"({"device_memory_bytes": 4000000})");
  plan = ApplyAutoCut(&more, kImage, 10);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(plan->segments_size(), 2);
  for (const auto& segment : plan->segments()) {
    EXPECT_LE(segment.training_memory_bytes(), 4000000);
  }
}

TEST(AutoCutTest, AModelThatCannotFitNamesTheSmallestBudget) {
  pnn::v1::JobSpec spec = Resolved(R"({"device_memory_bytes": 1000})");
  auto plan = ApplyAutoCut(&spec, kImage, 10);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(plan.status().message());
  EXPECT_THAT(message, HasSubstr("auto_cut.device_memory_bytes"));
  EXPECT_THAT(message, HasSubstr("smallest budget that would work is"));
  // That budget does work.
  const size_t at = message.find("would work is ") + 14;
  const int64_t smallest = std::stoll(message.substr(at));
  pnn::v1::JobSpec enough =
      Resolved(absl::StrCat(R"({"device_memory_bytes": )", smallest, "}"));
  EXPECT_TRUE(ApplyAutoCut(&enough, kImage, 10).ok());
  pnn::v1::JobSpec short_of_it =
      Resolved(absl::StrCat(R"({"device_memory_bytes": )", smallest - 1, "}"));
  EXPECT_FALSE(ApplyAutoCut(&short_of_it, kImage, 10).ok());
}

TEST(AutoCutTest, InvalidRequestsNameTheField) {
  struct Case {
    const char* json;
    const char* field;
  };
  for (
      const Case& c : std::vector<Case>{
          {R"({"auto_cut": {"segments": 2}, "model": {"cut_after_layers": [2]}})",
           "not both"},
          {R"({"auto_cut": {"segments": 9}})", "auto_cut.segments"},
          {R"({"auto_cut": {"segments": 1}})", "auto_cut.segments"},
          {R"({"auto_cut": {}})", "exactly one of segments"},
          {R"({"auto_cut": {"segments": 2, "device_memory_bytes": 5}})",
           "exactly one of segments"},
          {R"({"auto_cut": {"device_memory_bytes": -5}})",
           "auto_cut.device_memory_bytes"},
          {R"({"auto_cut": {"segments": 2}, "segment_training": [{}]})",
           "segment_training"},
          {R"({"auto_cut": {"segments": 2},
                "parallelism": "PARALLELISM_CONVENTIONAL"})",
           "conventional"},
          {R"({"auto_cut": {"device_memory_bytes": 5,
                "objective": "BALANCE_OBJECTIVE_FLOPS"}})",
           "auto_cut.objective"},
          {R"({"auto_cut": {"device_memory_bytes": 5,
                "objective": "BALANCE_OBJECTIVE_MEASURED_TIME"}})",
           "auto_cut.objective"},
          {R"({"auto_cut": {"segments": 2, "profile_batches": 3}})",
           "auto_cut.profile_batches: applies to "
           "BALANCE_OBJECTIVE_MEASURED_TIME only"},
          {R"({"auto_cut": {"segments": 2, "profile_batches": 51,
                "objective": "BALANCE_OBJECTIVE_MEASURED_TIME"}})",
           "auto_cut.profile_batches: must be between 1 and 50"}}) {
    auto spec = ParseJobSpecJson(c.json);
    ASSERT_TRUE(spec.ok()) << c.json << ": " << spec.status();
    auto resolved = ResolveJobSpec(*spec);
    ASSERT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument)
        << c.json;
    EXPECT_THAT(std::string(resolved.status().message()), HasSubstr(c.field))
        << c.json;
  }
}

// Measured time: the cuts balance the times given (not the FLOPs), each
// segment carries its measured share, and the plan says where they were
// measured.
TEST(AutoCutTest, MeasuredTimeBalancesTheLayersTimes) {
  pnn::v1::JobSpec spec = Resolved(
      R"({"segments": 2, "objective": "BALANCE_OBJECTIVE_MEASURED_TIME"})");
  EXPECT_EQ(spec.auto_cut().profile_batches(), 5);  // the default
  EXPECT_TRUE(NeedsLayerTimes(spec));
  pnn::v1::JobSpec without_times = spec;
  EXPECT_EQ(ApplyAutoCut(&without_times, kImage, 10).status().code(),
            absl::StatusCode::kFailedPrecondition);
  LayerTimes wrong{{1, 2, 3}, "here"};
  EXPECT_EQ(ApplyAutoCut(&without_times, kImage, 10, &wrong).status().code(),
            absl::StatusCode::kInvalidArgument);

  // FLOPs would cut after layer 2; these times put the weight on layer 5:
  // cut after 4 gives 4 | 5 s, after 3 gives 3 | 6, after 5 gives 8 | 1.
  const LayerTimes times{{1, 1, 1, 1, 4, 1}, "worker w-1 (cpu, 2 threads)"};
  auto plan = ApplyAutoCut(&spec, kImage, 10, &times);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->cut_after_layers(), ElementsAre(4));
  ASSERT_EQ(plan->segments_size(), 2);
  EXPECT_DOUBLE_EQ(plan->segments(0).measured_seconds_per_batch(), 4);
  EXPECT_DOUBLE_EQ(plan->segments(1).measured_seconds_per_batch(), 5);
  EXPECT_GT(plan->segments(0).training_flops_per_sample(), 0);
  EXPECT_EQ(plan->profiled_on(), "worker w-1 (cpu, 2 threads)");
}

TEST(AutoCutTest, ModelParallelJobsGetTheirMicroBatchesOnceCut) {
  pnn::v1::JobSpec spec = Resolved(
      R"({"segments": 3})", R"(, "parallelism": "PARALLELISM_MODEL_PARALLEL")");
  EXPECT_EQ(spec.pipeline().micro_batches(), 0);
  ASSERT_TRUE(ApplyAutoCut(&spec, kImage, 10).ok());
  EXPECT_EQ(spec.pipeline().micro_batches(), 12);
}

}  // namespace
}  // namespace pnn
