// The micro-batch schedules of a model-parallel pipeline (GPipe, 1F1B) as
// plain orders of operations, and the figures that follow from them: the
// micro-batch sizes of a batch, how many micro-batches a stage keeps, the
// ideal bubble. Pure functions, free of libtorch and RPC, so both the
// worker's stage runner and the first stage's training loop follow the
// same order and tests can check it alone.
#ifndef PNN_COMMON_PIPELINE_SCHEDULE_H_
#define PNN_COMMON_PIPELINE_SCHEDULE_H_

#include <cstdint>
#include <vector>

#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

struct MicroBatchOp {
  bool forward = true;  // false: the backward pass
  int micro = 0;        // 0-based within the batch
  bool operator==(const MicroBatchOp& other) const {
    return forward == other.forward && micro == other.micro;
  }
};

// The order in which stage `stage` (0-based) of `stages` runs the forward
// and backward passes of a batch's `micro_batches` micro-batches:
//  GPipe: F0 .. F(M-1), then B0 .. B(M-1);
//  1F1B:  w = min(stages - stage - 1, M) warm-up forwards, then one
//         forward and one backward at a time, then the remaining backwards.
// Every micro-batch's forward comes before its backward, and backwards run
// in micro-batch order at every stage, which is what makes the stages'
// orders compatible (no stage waits for a pass its neighbour runs later).
std::vector<MicroBatchOp> StageSchedule(pnn::v1::PipelineSchedule schedule,
                                        int stage, int stages,
                                        int micro_batches);

// The most micro-batches whose forward has run and backward has not, at
// any point of StageSchedule: what the stage's activations cost, in
// micro-batches.
int MicroBatchesKept(pnn::v1::PipelineSchedule schedule, int stage, int stages,
                     int micro_batches);

// Whether a stage computes its weight gradients after each micro-batch's
// backward (1F1B: only the micro-batches in flight are kept) rather than
// once after the batch's last one (GPipe, which keeps the whole batch
// anyway); see common/weight_gradient_tape.h.
bool WeightGradientsPerMicroBatch(pnn::v1::PipelineSchedule schedule);

// Rows of each micro-batch when a batch of `rows` is split into
// `micro_batches`: min(micro_batches, rows) parts whose sizes differ by at
// most one, the larger ones first (at::split_with_sizes' argument).
std::vector<int64_t> MicroBatchSizes(int64_t rows, int micro_batches);

// (K - 1) / (M + K - 1): the share of time each stage idles in a pipeline
// of K equal stages and M micro-batches with free communication.
double BubbleFormula(int stages, int micro_batches);

// A pipeline stage's cost once it has trained: the idle fraction (1 -
// busy_seconds / cost->wall_seconds()), the micro-batches its schedule
// keeps and the activation bytes of that many micro-batches' rows in
// place of the whole batch's (GPipe with several micro-batches: plus the
// linear layers' output gradients its deferred weight gradients keep).
// `task` is the stage's (task.pipeline set).
void FillPipelineCost(const pnn::v1::SegmentTask& task, double busy_seconds,
                      pnn::v1::TrainingCost* cost);

}  // namespace pnn

#endif  // PNN_COMMON_PIPELINE_SCHEDULE_H_
