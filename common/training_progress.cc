#include "common/training_progress.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/device_memory.h"

namespace pnn::internal {
namespace {

double SecondsBetween(std::chrono::steady_clock::time_point from,
                      std::chrono::steady_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

bool IsCheckpointBatch(int64_t batch, int64_t batches, int per_epoch) {
  if (per_epoch <= 0) return false;
  return (batch * per_epoch) / batches > ((batch - 1) * per_epoch) / batches;
}

absl::Status CheckFiniteLoss(double loss, int epoch, int64_t batch,
                             absl::string_view hint) {
  if (std::isfinite(loss)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("training diverged: loss is ", loss, " in epoch ", epoch,
                   ", batch ", batch, "; ", hint));
}

TrainingProgress::TrainingProgress(BatchReport on_batches,
                                   int64_t report_interval)
    : on_batches_(std::move(on_batches)), report_interval_(report_interval) {}

void TrainingProgress::Resume(std::vector<pnn::v1::EpochMetrics> epochs,
                              double seconds) {
  epochs_ = std::move(epochs);
  resumed_seconds_ = seconds;
}

void TrainingProgress::Start(int64_t batches_per_epoch) {
  batches_per_epoch_ = batches_per_epoch;
  started_ = true;
  memory_.Start();
  ResetDevicePeakMemory(cuda_index_);
  start_ = Clock::now();
  cpu_start_ = ProcessCpuSeconds();
  end_ = start_;
  cpu_end_ = cpu_start_;
}

void TrainingProgress::BeginEpoch() {
  epoch_start_ = Clock::now();
  loss_sum_ = 0;
  seen_ = 0;
}

void TrainingProgress::AddBatch(int epoch, int64_t batch, int64_t rows,
                                double loss) {
  loss_sum_ += loss * static_cast<double>(rows);
  seen_ += rows;
  if (on_batches_ && report_interval_ > 0 &&
      (batch % report_interval_ == 0 || batch == batches_per_epoch_)) {
    on_batches_(epoch, batch, batches_per_epoch_,
                loss_sum_ / static_cast<double>(seen_));
  }
}

pnn::v1::EpochMetrics TrainingProgress::EndEpoch(int epoch) {
  pnn::v1::EpochMetrics metrics;
  metrics.set_epoch(epoch);
  metrics.set_train_loss(loss_sum_ / static_cast<double>(seen_));
  metrics.set_seconds(SecondsBetween(epoch_start_, Clock::now()));
  metrics.set_samples_per_second(static_cast<double>(seen_) /
                                 std::max(metrics.seconds(), 1e-9));
  metrics.set_peak_rss_growth_bytes(memory_.PeakGrowthBytes());
  metrics.set_device_peak_allocated_bytes(
      ReadDevicePeakMemory(cuda_index_).allocated_bytes);
  samples_seen_ += seen_;
  epochs_.push_back(metrics);
  return metrics;
}

pnn::v1::Checkpoint TrainingProgress::NewCheckpoint(int epoch,
                                                    int64_t batch) const {
  pnn::v1::Checkpoint checkpoint;
  checkpoint.set_epoch(epoch);
  checkpoint.set_batches_done(batch);
  checkpoint.set_epochs_done((epoch - 1) +
                             static_cast<double>(batch) /
                                 static_cast<double>(batches_per_epoch_));
  checkpoint.set_elapsed_seconds(resumed_seconds_ +
                                 SecondsBetween(start_, Clock::now()));
  checkpoint.set_cpu_seconds(ProcessCpuSeconds() - cpu_start_);
  return checkpoint;
}

void TrainingProgress::MarkEnd() {
  end_ = Clock::now();
  cpu_end_ = ProcessCpuSeconds();
}

void TrainingProgress::FillMeasuredCost(pnn::v1::TrainingCost* cost) const {
  const double seconds = SecondsBetween(start_, end_);
  cost->set_wall_seconds(resumed_seconds_ + seconds);
  cost->set_samples_per_second(static_cast<double>(samples_seen_) /
                               std::max(seconds, 1e-9));
  cost->set_peak_rss_growth_bytes(memory_.PeakGrowthBytes());
  const DevicePeakMemory device_peak = ReadDevicePeakMemory(cuda_index_);
  cost->set_device_peak_allocated_bytes(device_peak.allocated_bytes);
  cost->set_device_peak_reserved_bytes(device_peak.reserved_bytes);
  cost->set_cpu_seconds(cpu_end_ - cpu_start_);
}

}  // namespace pnn::internal
