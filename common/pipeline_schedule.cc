#include "common/pipeline_schedule.h"

#include <algorithm>

namespace pnn {

std::vector<MicroBatchOp> StageSchedule(pnn::v1::PipelineSchedule schedule,
                                        int stage, int stages,
                                        int micro_batches) {
  std::vector<MicroBatchOp> order;
  order.reserve(2 * static_cast<size_t>(std::max(micro_batches, 0)));
  if (schedule != pnn::v1::PIPELINE_SCHEDULE_1F1B) {
    for (int m = 0; m < micro_batches; ++m) order.push_back({true, m});
    for (int m = 0; m < micro_batches; ++m) order.push_back({false, m});
    return order;
  }
  // A stage must have sent as many micro-batches ahead as the stages after
  // it need to fill up before its first gradient can come back.
  const int warmup = std::clamp(stages - stage - 1, 0, micro_batches);
  int forwards = 0;
  int backwards = 0;
  while (forwards < warmup) order.push_back({true, forwards++});
  while (forwards < micro_batches) {
    order.push_back({true, forwards++});
    order.push_back({false, backwards++});
  }
  while (backwards < micro_batches) order.push_back({false, backwards++});
  return order;
}

int MicroBatchesKept(pnn::v1::PipelineSchedule schedule, int stage, int stages,
                     int micro_batches) {
  int live = 0;
  int most = 0;
  for (const MicroBatchOp& op :
       StageSchedule(schedule, stage, stages, micro_batches)) {
    live += op.forward ? 1 : -1;
    most = std::max(most, live);
  }
  return most;
}

bool WeightGradientsPerMicroBatch(pnn::v1::PipelineSchedule schedule) {
  return schedule == pnn::v1::PIPELINE_SCHEDULE_1F1B;
}

std::vector<int64_t> MicroBatchSizes(int64_t rows, int micro_batches) {
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(micro_batches, rows));
  std::vector<int64_t> sizes(static_cast<size_t>(parts), rows / parts);
  for (int64_t i = 0; i < rows % parts; ++i) ++sizes[static_cast<size_t>(i)];
  return sizes;
}

double BubbleFormula(int stages, int micro_batches) {
  if (stages < 1 || micro_batches < 1) return 0;
  return static_cast<double>(stages - 1) /
         static_cast<double>(micro_batches + stages - 1);
}

void FillPipelineCost(const pnn::v1::SegmentTask& task, double busy_seconds,
                      pnn::v1::TrainingCost* cost) {
  const double wall = cost->wall_seconds();
  cost->set_idle_fraction(
      wall > 0 ? std::clamp(1.0 - busy_seconds / wall, 0.0, 1.0) : 0.0);
  const int batch = task.training().batch_size();
  const int micro_batches = std::max(1, task.pipeline().micro_batches());
  const std::vector<int64_t> sizes = MicroBatchSizes(batch, micro_batches);
  const int kept =
      MicroBatchesKept(task.pipeline().schedule(), task.segment_index(),
                       task.segment_count(), static_cast<int>(sizes.size()));
  cost->set_micro_batches_kept(kept);
  if (batch < 1) return;
  int64_t rows = 0;
  for (int i = 0; i < kept && i < static_cast<int>(sizes.size()); ++i) {
    rows += sizes[static_cast<size_t>(i)];
  }
  // AnalyticTrainingCost counts the activations of a whole batch.
  int64_t activation_bytes = cost->activation_bytes() / batch * rows;
  // GPipe's weight gradients wait for the batch's end
  // (common/weight_gradient_tape.h): until then each linear layer's output
  // gradient of every micro-batch is kept too.
  if (!WeightGradientsPerMicroBatch(task.pipeline().schedule()) &&
      sizes.size() > 1) {
    int64_t linear_outputs = 0;
    for (const auto& layer : task.layers()) {
      if (layer.has_linear()) linear_outputs += layer.linear().out_features();
    }
    activation_bytes += linear_outputs * batch * 4;  // fp32
  }
  cost->set_activation_bytes(activation_bytes);
}

}  // namespace pnn
