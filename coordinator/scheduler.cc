#include "coordinator/scheduler.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/accounting.h"
#include "common/layers.h"
#include "coordinator/placement.h"

namespace pnn {
namespace {

// A task's predicted training work, to give the heaviest segment the
// fastest worker: analytic training FLOPs per sample x epochs (every
// segment of a job sees the same samples).
int64_t TaskWork(const pnn::v1::SegmentTask& task) {
  const pnn::v1::TrainingCost cost =
      AnalyticTrainingCost(TaskArchitecture(task), task.training());
  return cost.training_flops_per_sample() * task.training().epochs();
}

}  // namespace

std::vector<Scheduler::Start> Scheduler::Pass(absl::Time now) {
  std::vector<Start> starts;
  for (JobRecord* record : table_->Unfinished()) {
    if (!PlanPipeline(*record, now, &starts)) break;
    PlanQueued(*record, now, &starts);
  }
  return starts;
}

bool Scheduler::PlanPipeline(JobRecord& record, absl::Time now,
                             std::vector<Start>* starts) {
  const std::vector<size_t> stages = table_->PipelineStagesToStart(record);
  if (stages.empty()) return true;
  // Every batch crosses every stage, so the stages start together on as
  // many workers or not at all.
  const std::string& device = record.tasks[stages[0]].task.device();
  const std::vector<WorkerRegistry::Worker> available =
      workers_->Available(now);
  size_t matching = 0;
  for (const WorkerRegistry::Worker& worker : workers_->All()) {
    matching += DeviceMatches(device, worker.info.device());
  }
  std::vector<int64_t> stage_work;
  for (size_t index : stages) {
    stage_work.push_back(TaskWork(record.tasks[index].task));
  }
  const PipelinePlacement placement =
      PlacePipeline(device, stages.size(), available, matching,
                    now - 2 * heartbeat_interval_, stage_work);
  if (placement.workers.empty()) return !placement.gang_waits;
  std::vector<Start> planned;
  std::vector<std::string> addresses;
  for (size_t i = 0; i < stages.size(); ++i) {
    const WorkerRegistry::Worker& worker = available[placement.workers[i]];
    if (!workers_->Claim(worker.id,
                         {record.id(), static_cast<int>(stages[i])})) {
      // Gone in the meantime: give back what was claimed, try next pass.
      for (const Start& start : planned) {
        workers_->Release(start.worker.id,
                          {record.id(), static_cast<int>(start.task_index)});
      }
      return true;
    }
    planned.push_back({&record, stages[i], worker});
    addresses.push_back(worker.info.address());
  }
  // A fresh session per run (unique even when a busy worker's refusal did
  // not count as an attempt): calls from an earlier run's stages are
  // refused by this run's workers.
  int attempt = 0;
  for (size_t index : stages) {
    attempt = std::max(attempt, record.tasks[index].status.attempts());
  }
  table_->PreparePipeline(
      record, stages, addresses,
      absl::StrCat(record.id(), "-run", attempt + 1, "-", ++pipeline_runs_));
  starts->insert(starts->end(), planned.begin(), planned.end());
  return true;
}

void Scheduler::PlanQueued(JobRecord& record, absl::Time now,
                           std::vector<Start>* starts) {
  std::vector<QueuedTask> queued;
  for (size_t index = 0; index < record.tasks.size(); ++index) {
    const TaskRecord& task = record.tasks[index];
    if (task.status.state() == pnn::v1::TASK_STATE_QUEUED && !task.is_stage()) {
      queued.push_back({index, task.task.device(), TaskWork(task.task)});
    }
  }
  if (queued.empty()) return;
  const std::vector<WorkerRegistry::Worker> available =
      workers_->Available(now);
  for (const auto& [index, w] : PlaceTasks(queued, available)) {
    if (workers_->Claim(available[w].id,
                        {record.id(), static_cast<int>(index)})) {
      starts->push_back({&record, index, available[w]});
    }
  }
}

}  // namespace pnn
