// The micro-batch schedules (GPipe, 1F1B) and the figures derived from
// them: orders every stage can follow together, what each stage keeps,
// micro-batch sizes and the ideal bubble.
#include "common/pipeline_schedule.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using pnn::v1::PIPELINE_SCHEDULE_1F1B;
using pnn::v1::PIPELINE_SCHEDULE_GPIPE;
using ::testing::ElementsAre;

// "F0 F1 B0 ..." for readable expectations.
std::string Render(const std::vector<MicroBatchOp>& order) {
  std::string out;
  for (const MicroBatchOp& op : order) {
    if (!out.empty()) out += " ";
    out += (op.forward ? "F" : "B") + std::to_string(op.micro);
  }
  return out;
}

TEST(PipelineScheduleTest, GPipeRunsEveryForwardBeforeAnyBackward) {
  EXPECT_EQ(Render(StageSchedule(PIPELINE_SCHEDULE_GPIPE, 0, 2, 3)),
            "F0 F1 F2 B0 B1 B2");
  EXPECT_EQ(Render(StageSchedule(PIPELINE_SCHEDULE_GPIPE, 1, 2, 3)),
            "F0 F1 F2 B0 B1 B2");
  EXPECT_EQ(MicroBatchesKept(PIPELINE_SCHEDULE_GPIPE, 0, 2, 8), 8);
  EXPECT_EQ(MicroBatchesKept(PIPELINE_SCHEDULE_GPIPE, 1, 2, 8), 8);
}

TEST(PipelineScheduleTest, OneForwardOneBackwardWarmsUpByTheStagesAfter) {
  EXPECT_EQ(Render(StageSchedule(PIPELINE_SCHEDULE_1F1B, 0, 3, 4)),
            "F0 F1 F2 B0 F3 B1 B2 B3");
  EXPECT_EQ(Render(StageSchedule(PIPELINE_SCHEDULE_1F1B, 1, 3, 4)),
            "F0 F1 B0 F2 B1 F3 B2 B3");
  EXPECT_EQ(Render(StageSchedule(PIPELINE_SCHEDULE_1F1B, 2, 3, 4)),
            "F0 B0 F1 B1 F2 B2 F3 B3");
  // Fewer micro-batches than the warm-up wants: all forwards first.
  EXPECT_EQ(Render(StageSchedule(PIPELINE_SCHEDULE_1F1B, 0, 4, 2)),
            "F0 F1 B0 B1");
  // Stage s of K keeps K - s micro-batches, not M.
  EXPECT_EQ(MicroBatchesKept(PIPELINE_SCHEDULE_1F1B, 0, 2, 8), 2);
  EXPECT_EQ(MicroBatchesKept(PIPELINE_SCHEDULE_1F1B, 1, 2, 8), 1);
  EXPECT_EQ(MicroBatchesKept(PIPELINE_SCHEDULE_1F1B, 0, 3, 8), 3);
  EXPECT_EQ(MicroBatchesKept(PIPELINE_SCHEDULE_1F1B, 0, 3, 2), 2);
}

// Simulates the stages running their orders at once (unit time per pass):
// a schedule is usable only if no stage ever waits for a pass that its
// neighbour would run after waiting for this stage (a deadlock).
TEST(PipelineScheduleTest, EveryStageCanFollowItsOrderTogether) {
  for (auto schedule : {PIPELINE_SCHEDULE_GPIPE, PIPELINE_SCHEDULE_1F1B}) {
    for (int stages = 1; stages <= 4; ++stages) {
      for (int micro = 1; micro <= 9; ++micro) {
        std::vector<std::vector<MicroBatchOp>> orders;
        for (int s = 0; s < stages; ++s) {
          orders.push_back(StageSchedule(schedule, s, stages, micro));
          ASSERT_EQ(orders.back().size(), 2u * micro);
        }
        // forward_done[s][m], backward_done[s][m]
        std::vector<std::vector<bool>> fwd(stages, std::vector<bool>(micro));
        std::vector<std::vector<bool>> bwd(stages, std::vector<bool>(micro));
        std::vector<size_t> next(stages, 0);
        bool progressed = true;
        while (progressed) {
          progressed = false;
          for (int s = 0; s < stages; ++s) {
            if (next[s] == orders[s].size()) continue;
            const MicroBatchOp op = orders[s][next[s]];
            const bool ready =
                op.forward ? (s == 0 || fwd[s - 1][op.micro])
                           : (fwd[s][op.micro] &&
                              (s + 1 == stages || bwd[s + 1][op.micro]));
            if (!ready) continue;
            (op.forward ? fwd : bwd)[s][op.micro] = true;
            ++next[s];
            progressed = true;
          }
        }
        for (int s = 0; s < stages; ++s) {
          EXPECT_EQ(next[s], orders[s].size())
              << "stage " << s << " of " << stages << " stuck, M = " << micro
              << ", schedule " << schedule;
        }
      }
    }
  }
}

TEST(PipelineScheduleTest, MicroBatchSizesSplitTheRemainderOneRowEach) {
  EXPECT_THAT(MicroBatchSizes(128, 8),
              ElementsAre(16, 16, 16, 16, 16, 16, 16, 16));
  EXPECT_THAT(MicroBatchSizes(10, 4), ElementsAre(3, 3, 2, 2));
  // A short last batch: no empty micro-batches.
  EXPECT_THAT(MicroBatchSizes(3, 8), ElementsAre(1, 1, 1));
  EXPECT_THAT(MicroBatchSizes(5, 1), ElementsAre(5));
}

TEST(PipelineScheduleTest, BubbleFormula) {
  EXPECT_DOUBLE_EQ(BubbleFormula(2, 1), 0.5);
  EXPECT_DOUBLE_EQ(BubbleFormula(2, 8), 1.0 / 9);
  EXPECT_DOUBLE_EQ(BubbleFormula(4, 16), 3.0 / 19);
  EXPECT_DOUBLE_EQ(BubbleFormula(1, 8), 0);
}

TEST(PipelineScheduleTest, PipelineCostCountsTheMicroBatchesKept) {
  pnn::v1::SegmentTask task;
  task.set_segment_index(0);
  task.set_segment_count(2);
  task.mutable_training()->set_batch_size(10);
  task.mutable_pipeline()->set_micro_batches(4);  // 3, 3, 2, 2 rows
  task.mutable_pipeline()->set_schedule(PIPELINE_SCHEDULE_1F1B);
  pnn::v1::TrainingCost cost;
  cost.set_wall_seconds(4);
  cost.set_activation_bytes(10 * 100);  // 100 bytes per row
  FillPipelineCost(task, /*busy_seconds=*/3, &cost);
  EXPECT_DOUBLE_EQ(cost.idle_fraction(), 0.25);
  EXPECT_EQ(cost.micro_batches_kept(), 2);
  EXPECT_EQ(cost.activation_bytes(), 6 * 100);  // the two largest
}

TEST(PipelineScheduleTest, GPipeCostCountsTheDeferredOutputGradients) {
  pnn::v1::SegmentTask task;
  task.set_segment_index(0);
  task.set_segment_count(2);
  task.mutable_training()->set_batch_size(10);
  task.add_layers()->mutable_linear()->set_out_features(7);
  task.add_layers()->mutable_dropout();
  task.add_layers()->mutable_linear()->set_out_features(5);
  task.mutable_pipeline()->set_micro_batches(4);
  task.mutable_pipeline()->set_schedule(PIPELINE_SCHEDULE_GPIPE);
  pnn::v1::TrainingCost cost;
  cost.set_wall_seconds(1);
  cost.set_activation_bytes(10 * 100);
  FillPipelineCost(task, /*busy_seconds=*/1, &cost);
  EXPECT_EQ(cost.micro_batches_kept(), 4);
  // The whole batch, and each linear layer's output gradient of each row
  // until the batch's weight gradients are computed.
  EXPECT_EQ(cost.activation_bytes(), 10 * 100 + 10 * (7 + 5) * 4);

  // One micro-batch: computed at once, nothing waits.
  task.mutable_pipeline()->set_micro_batches(1);
  cost.set_activation_bytes(10 * 100);
  FillPipelineCost(task, 1, &cost);
  EXPECT_EQ(cost.activation_bytes(), 10 * 100);
}

}  // namespace
}  // namespace pnn
