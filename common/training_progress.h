// The bookkeeping that both training loops share: the segment and network
// loop (common/trainer.cc) and the pipeline stage loop (common/pipeline.cc,
// which the worker's StageRunner drives batch by batch). One piece for
// progress reports, epoch metrics, checkpoint positions and times, the
// divergence check and the measured cost, so that a pipeline stage reports
// exactly what a segment reports. Internal to common/; not for code outside
// it.
//
// Free of libtorch: the loops own the model and the optimizer, and add the
// weights (or the resumable state) to the checkpoints made here.
// Not thread-safe: one training thread per instance.
#ifndef PNN_COMMON_TRAINING_PROGRESS_H_
#define PNN_COMMON_TRAINING_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/accounting.h"
#include "pnn/v1/segment.pb.h"

namespace pnn::internal {

// True when batch `batch` (1-based) of `batches` ends one of `per_epoch`
// evenly spaced evaluation points; the last batch always does.
bool IsCheckpointBatch(int64_t batch, int64_t batches, int per_epoch);

// OK for a finite loss; otherwise FAILED_PRECONDITION "training diverged"
// with the batch and `hint` (what to change), so that the job fails with a
// message a person can act on instead of training on NaNs.
absl::Status CheckFiniteLoss(double loss, int epoch, int64_t batch,
                             absl::string_view hint);

class TrainingProgress {
 public:
  // Epoch (1-based), batches done in the epoch, batches per epoch, mean
  // loss so far in the epoch (TrainOptions::on_batches).
  using BatchReport = std::function<void(int, int64_t, int64_t, double)>;

  // `on_batches` (may be unset) hears every `report_interval` batches and
  // at every epoch's end; an interval < 1 reports nothing.
  TrainingProgress(BatchReport on_batches, int64_t report_interval);

  // Continues a resumed run: its finished epochs come first in epochs(),
  // and the training time before the resume counts in elapsed times and
  // wall seconds (not in samples/s). Call before Start().
  void Resume(std::vector<pnn::v1::EpochMetrics> epochs, double seconds);

  // Also measure the CUDA allocator's peaks on device `cuda_index` (the
  // training device; negative: none). Call before Start().
  void MeasureCudaDevice(int cuda_index) { cuda_index_ = cuda_index; }

  // Starts the wall and CPU clocks and the peak RSS meter (and the device's
  // peaks, from what it holds now): the measured cost spans from here to
  // the last MarkEnd().
  void Start(int64_t batches_per_epoch);
  bool started() const { return started_; }

  // Starts an epoch's clock and its mean loss.
  void BeginEpoch();
  // Counts one trained batch (`rows` samples, mean loss `loss`) into the
  // epoch's mean loss and reports progress when due.
  void AddBatch(int epoch, int64_t batch, int64_t rows, double loss);
  // Ends the epoch: its metrics (mean loss, time, samples/s, peak RSS
  // growth so far) are appended to epochs() and returned.
  pnn::v1::EpochMetrics EndEpoch(int epoch);

  // A checkpoint after batch `batch` of `epoch`: position, elapsed time
  // and CPU time filled in; the weights or the state are the caller's.
  pnn::v1::Checkpoint NewCheckpoint(int epoch, int64_t batch) const;

  // Marks the end of the last batch trained so far.
  void MarkEnd();
  // Sets the measured part of `cost`: wall seconds (with the resumed time),
  // samples/s of this run, peak RSS growth (now), CPU seconds, all up to
  // the last MarkEnd(). The analytic part and the data set's bytes are the
  // caller's.
  void FillMeasuredCost(pnn::v1::TrainingCost* cost) const;

  // Finished epochs, the resumed ones included.
  const std::vector<pnn::v1::EpochMetrics>& epochs() const { return epochs_; }

 private:
  using Clock = std::chrono::steady_clock;

  const BatchReport on_batches_;
  const int64_t report_interval_;
  int64_t batches_per_epoch_ = 0;
  bool started_ = false;
  double resumed_seconds_ = 0;
  Clock::time_point start_;
  Clock::time_point epoch_start_;
  Clock::time_point end_;
  double cpu_start_ = 0;
  double cpu_end_ = 0;
  PeakRssMeter memory_;
  int cuda_index_ = -1;
  double loss_sum_ = 0;       // in the current epoch, weighted by rows
  int64_t seen_ = 0;          // samples in the current epoch
  int64_t samples_seen_ = 0;  // in this run (not counting a resumed part)
  std::vector<pnn::v1::EpochMetrics> epochs_;
};

}  // namespace pnn::internal

#endif  // PNN_COMMON_TRAINING_PROGRESS_H_
