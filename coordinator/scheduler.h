// The scheduler: one pass over the unfinished jobs decides which queued
// tasks start now and on which workers (placement.h), and claims those
// workers in the registry. The coordinator then dispatches what it chose.
//
// Jobs are served in submission order; within a job, segments before the
// baseline. A model-parallel job's stages start together or not at all, and
// while such a job waits for its gang, later jobs wait too.
//
// Thread safety: none of its own; called under the coordinator's lock (the
// registry has its own). Cheap: no disk, RPC or libtorch.
#ifndef PNN_COORDINATOR_SCHEDULER_H_
#define PNN_COORDINATOR_SCHEDULER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "coordinator/job_table.h"
#include "coordinator/worker_registry.h"

namespace pnn {

class Scheduler {
 public:
  // A task to dispatch now, on a worker claimed for it.
  struct Start {
    JobRecord* record = nullptr;
    size_t task_index = 0;
    WorkerRegistry::Worker worker;
  };
  // `workers` and `table` outlive the scheduler. Pipelines start only on
  // workers heard from within two `heartbeat_interval`s.
  Scheduler(JobTable* table, WorkerRegistry* workers,
            absl::Duration heartbeat_interval)
      : table_(table), workers_(workers),
        heartbeat_interval_(heartbeat_interval) {}

  // What starts now. Pipelines' stages are given their session and
  // downstream addresses (JobTable::PreparePipeline).
  std::vector<Start> Pass(absl::Time now);

 private:
  // False while the job's pipeline waits for its gang.
  bool PlanPipeline(JobRecord& record, absl::Time now,
                    std::vector<Start>* starts);
  void PlanQueued(JobRecord& record, absl::Time now,
                  std::vector<Start>* starts);

  JobTable* const table_;
  WorkerRegistry* const workers_;
  const absl::Duration heartbeat_interval_;
  int64_t pipeline_runs_ = 0;  // makes each run's session unique
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_SCHEDULER_H_
