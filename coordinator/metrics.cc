#include "coordinator/metrics.h"

#include "coordinator/proto_time.h"
#include "rpc/metrics.h"

namespace pnn {
namespace {

constexpr pnn::v1::JobState kStates[] = {
    pnn::v1::JOB_STATE_QUEUED,     pnn::v1::JOB_STATE_RUNNING,
    pnn::v1::JOB_STATE_ASSEMBLING, pnn::v1::JOB_STATE_SUCCEEDED,
    pnn::v1::JOB_STATE_FAILED,     pnn::v1::JOB_STATE_CANCELLED};
constexpr pnn::v1::JobState kFinalStates[] = {pnn::v1::JOB_STATE_SUCCEEDED,
                                              pnn::v1::JOB_STATE_FAILED,
                                              pnn::v1::JOB_STATE_CANCELLED};

}  // namespace

const char* JobStateLabel(pnn::v1::JobState state) {
  switch (state) {
    case pnn::v1::JOB_STATE_QUEUED:
      return "queued";
    case pnn::v1::JOB_STATE_RUNNING:
      return "running";
    case pnn::v1::JOB_STATE_ASSEMBLING:
      return "assembling";
    case pnn::v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case pnn::v1::JOB_STATE_FAILED:
      return "failed";
    case pnn::v1::JOB_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& registry)
    : jobs_submitted(AddCounter(registry,
                                "pnn_coordinator_jobs_submitted_total",
                                "Jobs accepted by SubmitJob.")),
      queued_tasks(
          AddGauge(registry, "pnn_coordinator_queued_tasks",
                   "Segment and baseline tasks waiting for a worker.")),
      running_tasks(AddGauge(registry, "pnn_coordinator_running_tasks",
                             "Tasks being trained on workers.")),
      workers_registered(AddGauge(registry,
                                  "pnn_coordinator_workers_registered",
                                  "Workers registered with the coordinator.")),
      workers_healthy(AddGauge(registry, "pnn_coordinator_workers_healthy",
                               "Registered workers whose last heartbeat is "
                               "recent (within two intervals).")),
      workers_busy(AddGauge(registry, "pnn_coordinator_workers_busy",
                            "Registered workers training a task.")),
      task_dispatches(AddCounter(registry,
                                 "pnn_coordinator_task_dispatches_total",
                                 "Tasks sent to workers, retries included.")),
      task_retries(AddCounter(registry, "pnn_coordinator_task_retries_total",
                              "Tasks queued again after a worker failed or was "
                              "lost.")),
      workers_lost(AddCounter(registry, "pnn_coordinator_workers_lost_total",
                              "Workers dropped for missed heartbeats or "
                              "unreachable addresses.")),
      network_sent_bytes(
          AddCounter(registry, "pnn_coordinator_network_sent_bytes_total",
                     "Bytes of training RPC messages sent to workers.")),
      network_received_bytes(
          AddCounter(registry, "pnn_coordinator_network_received_bytes_total",
                     "Bytes of training RPC messages received from workers.")),
      last_test_accuracy(AddGauge(registry,
                                  "pnn_coordinator_last_test_accuracy_ratio",
                                  "Test accuracy (ratio) of the most recently "
                                  "assembled model.")),
      unauthenticated_requests(AddCounter(
          registry, "pnn_coordinator_unauthenticated_requests_total",
          "Calls refused for a missing or wrong token.")) {
  auto& finished = prometheus::BuildCounter()
                       .Name("pnn_coordinator_jobs_finished_total")
                       .Help("Jobs that reached a final state, by state.")
                       .Register(registry);
  auto& current = prometheus::BuildGauge()
                      .Name("pnn_coordinator_jobs")
                      .Help("Jobs known to the coordinator, by current state.")
                      .Register(registry);
  auto& duration = prometheus::BuildHistogram()
                       .Name("pnn_coordinator_job_duration_seconds")
                       .Help("Submission to final state, by final state.")
                       .Register(registry);
  for (pnn::v1::JobState state : kStates) {
    jobs[state] = &current.Add({{"state", JobStateLabel(state)}});
  }
  const prometheus::Histogram::BucketBoundaries buckets = {
      1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600};
  for (pnn::v1::JobState state : kFinalStates) {
    jobs_finished[state] = &finished.Add({{"state", JobStateLabel(state)}});
    job_duration[state] =
        &duration.Add({{"state", JobStateLabel(state)}}, buckets);
  }
}

void CoordinatorMetrics::RecordFinished(const pnn::v1::Job& job) {
  const pnn::v1::JobState state = job.state();
  if (auto finished = jobs_finished.find(state);
      finished != jobs_finished.end()) {
    finished->second->Increment();
  }
  if (auto duration = job_duration.find(state);
      duration != job_duration.end()) {
    duration->second->Observe(
        SecondsBetween(job.create_time(), job.end_time()));
  }
  if (state == pnn::v1::JOB_STATE_SUCCEEDED) {
    last_test_accuracy.Set(job.test().accuracy());
  }
}

void CoordinatorMetrics::SetJobGauges(
    const std::map<pnn::v1::JobState, int>& jobs_by_state, int queued,
    int running) {
  for (auto& [state, gauge] : jobs) {
    const auto count = jobs_by_state.find(state);
    gauge->Set(count == jobs_by_state.end() ? 0 : count->second);
  }
  queued_tasks.Set(queued);
  running_tasks.Set(running);
}

}  // namespace pnn
