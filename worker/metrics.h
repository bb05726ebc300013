// The worker's Prometheus metrics, created once at start-up in the process
// registry (rpc/metrics.h serves them). Labels are fixed outcomes only.
// The referenced metrics are thread-safe.
#ifndef PNN_WORKER_METRICS_H_
#define PNN_WORKER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/status.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {
namespace worker {

struct WorkerMetrics {
  explicit WorkerMetrics(prometheus::Registry& registry);

  // Counts a finished segment by outcome (succeeded, failed, cancelled).
  void RecordOutcome(const absl::Status& status);
  // The pnn_worker_segment_loss series of `task`: labelled by its 1-based
  // segment index and its target ("sil" for a segment that regresses a
  // synthetic intermediate label, "classes" for the last one). Segment
  // indices are few, so the series stay bounded.
  prometheus::Gauge& SegmentLoss(const pnn::v1::SegmentTask& task);

  prometheus::Counter& segments_succeeded;
  prometheus::Counter& segments_failed;
  prometheus::Counter& segments_cancelled;
  prometheus::Counter& epochs;
  prometheus::Histogram& epoch_duration;
  prometheus::Gauge& training_loss;
  prometheus::Gauge& samples_per_second;
  // Samples trained: full batches as they are reported, the rest at each
  // epoch's end (rate() of it is the throughput across epochs and
  // workers).
  prometheus::Counter& samples_trained;
  prometheus::Gauge& training_memory;
  prometheus::Gauge& device_peak_memory;
  // Model-parallel: the idle fraction of the last pipeline stage that
  // finished here (TrainingCost.idle_fraction).
  prometheus::Gauge& pipeline_idle;
  prometheus::Gauge& busy;
  prometheus::Counter& network_sent_bytes;
  prometheus::Counter& network_received_bytes;
  // Model-parallel: activations and gradients exchanged with other workers
  // (StageForward messages, both directions of this worker's calls).
  prometheus::Counter& peer_sent_bytes;
  prometheus::Counter& peer_received_bytes;
  prometheus::Counter& unauthenticated_requests;

 private:
  prometheus::Family<prometheus::Gauge>& segment_loss_;
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_METRICS_H_
