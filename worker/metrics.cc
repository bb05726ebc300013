#include "worker/metrics.h"

#include "absl/strings/str_cat.h"
#include "rpc/metrics.h"

namespace pnn {
namespace worker {
namespace {

prometheus::Family<prometheus::Counter>& Segments(
    prometheus::Registry& registry) {
  return prometheus::BuildCounter()
      .Name("pnn_worker_segments_total")
      .Help("Segments this worker finished training, by outcome.")
      .Register(registry);
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry)
    : segments_succeeded(Segments(registry).Add({{"outcome", "succeeded"}})),
      segments_failed(Segments(registry).Add({{"outcome", "failed"}})),
      segments_cancelled(Segments(registry).Add({{"outcome", "cancelled"}})),
      epochs(AddCounter(registry, "pnn_worker_epochs_total",
                        "Training epochs completed.")),
      epoch_duration(
          prometheus::BuildHistogram()
              .Name("pnn_worker_epoch_duration_seconds")
              .Help("Wall time of one training epoch.")
              .Register(registry)
              .Add({},
                   prometheus::Histogram::BucketBoundaries{
                       0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800})),
      training_loss(AddGauge(registry, "pnn_worker_training_loss",
                             "Mean training loss of the running segment's "
                             "current epoch so far.")),
      samples_per_second(AddGauge(registry, "pnn_worker_samples_per_second",
                                  "Training throughput of the last epoch.")),
      samples_trained(AddCounter(registry, "pnn_worker_samples_trained_total",
                                 "Training samples processed (full "
                                 "batches as reported, the rest at each "
                                 "epoch's end).")),
      training_memory(AddGauge(registry, "pnn_worker_training_memory_bytes",
                               "Peak resident memory growth of the running "
                               "segment's training.")),
      device_peak_memory(AddGauge(
          registry, "pnn_worker_device_peak_memory_bytes",
          "CUDA allocator peak (allocated bytes) of the running segment's "
          "training, as torch.cuda.max_memory_allocated; 0 on CPU.")),
      pipeline_idle(AddGauge(registry, "pnn_worker_pipeline_idle_ratio",
                             "Share of the last finished pipeline stage's "
                             "training time it spent not computing.")),
      busy(AddGauge(registry, "pnn_worker_busy",
                    "1 while a segment is training, else 0.")),
      network_sent_bytes(
          AddCounter(registry, "pnn_worker_network_sent_bytes_total",
                     "Bytes of training RPC messages sent to the "
                     "coordinator.")),
      network_received_bytes(AddCounter(
          registry, "pnn_worker_network_received_bytes_total",
          "Bytes of training RPC messages received from the coordinator.")),
      peer_sent_bytes(AddCounter(
          registry, "pnn_worker_peer_sent_bytes_total",
          "Bytes of model-parallel activations and gradients sent to other "
          "workers (StageForward messages).")),
      peer_received_bytes(AddCounter(
          registry, "pnn_worker_peer_received_bytes_total",
          "Bytes of model-parallel activations and gradients received from "
          "other workers (StageForward messages).")),
      unauthenticated_requests(
          AddCounter(registry, "pnn_worker_unauthenticated_requests_total",
                     "Calls refused for a missing or wrong token.")),
      segment_loss_(prometheus::BuildGauge()
                        .Name("pnn_worker_segment_loss")
                        .Help("Mean training loss of the segment's current "
                              "epoch so far, against its target: MSE to its "
                              "SIL (target=\"sil\") or cross-entropy to the "
                              "classes (target=\"classes\").")
                        .Register(registry)) {}

prometheus::Gauge& WorkerMetrics::SegmentLoss(
    const pnn::v1::SegmentTask& task) {
  return segment_loss_.Add(
      {{"segment", absl::StrCat(task.segment_index() + 1)},
       {"target", task.has_target_sil() ? "sil" : "classes"}});
}

void WorkerMetrics::RecordOutcome(const absl::Status& status) {
  if (status.ok()) {
    segments_succeeded.Increment();
  } else if (status.code() == absl::StatusCode::kCancelled) {
    segments_cancelled.Increment();
  } else {
    segments_failed.Increment();
  }
}

}  // namespace worker
}  // namespace pnn
