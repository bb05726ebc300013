// The coordinator's Prometheus metrics, created once at start-up in the
// process registry (see rpc/metrics.h for the /metrics endpoint). Label
// values are the fixed job states; no job or worker ids, so series never
// pile up. The referenced metrics are thread-safe.
#ifndef PNN_COORDINATOR_METRICS_H_
#define PNN_COORDINATOR_METRICS_H_

#include <map>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "pnn/v1/coordinator.pb.h"

namespace pnn {

struct CoordinatorMetrics {
  explicit CoordinatorMetrics(prometheus::Registry& registry);
  // Counts a job that has just reached its final state: by state, its
  // duration, and (succeeded) its test accuracy.
  void RecordFinished(const pnn::v1::Job& job);
  // The gauges of the scheduler's pass: jobs by state, tasks queued and
  // running.
  void SetJobGauges(const std::map<pnn::v1::JobState, int>& jobs_by_state,
                    int queued_tasks, int running_tasks);


  prometheus::Counter& jobs_submitted;
  std::map<pnn::v1::JobState, prometheus::Counter*> jobs_finished;
  std::map<pnn::v1::JobState, prometheus::Gauge*> jobs;
  std::map<pnn::v1::JobState, prometheus::Histogram*> job_duration;
  prometheus::Gauge& queued_tasks;
  prometheus::Gauge& running_tasks;
  prometheus::Gauge& workers_registered;
  prometheus::Gauge& workers_healthy;
  prometheus::Gauge& workers_busy;
  prometheus::Counter& task_dispatches;
  prometheus::Counter& task_retries;
  prometheus::Counter& workers_lost;
  prometheus::Counter& network_sent_bytes;
  prometheus::Counter& network_received_bytes;
  prometheus::Gauge& last_test_accuracy;
  prometheus::Counter& unauthenticated_requests;
};

// "queued", "running", ... for the state label.
const char* JobStateLabel(pnn::v1::JobState state);

}  // namespace pnn

#endif  // PNN_COORDINATOR_METRICS_H_
