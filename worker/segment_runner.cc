#include "worker/segment_runner.h"

#include <chrono>
#include <exception>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/dataset_cache.h"
#include "common/job_spec.h"
#include "common/trainer.h"
#include "worker/log.h"
#include "worker/metrics.h"

namespace pnn {
namespace worker {
namespace {

using pnn::v1::SegmentTask;
using pnn::v1::TrainSegmentUpdate;

std::string Describe(const SegmentTask& task) {
  return absl::StrCat("job ", task.job_id(), " segment ", task.segment_index());
}

// The dataset spec with its documented default path filled in, so a task
// that left the path empty reads the same directory the coordinator means.
pnn::v1::DatasetSpec EffectiveDataset(const SegmentTask& task) {
  pnn::v1::DatasetSpec spec = task.dataset();
  if (spec.path().empty()) spec.set_path(kDefaultDatasetPath);
  return spec;
}

// Prefixes a status with the worker's name: the coordinator copies worker
// errors into the job, where a person needs to know which machine to fix.
absl::Status WithWorker(const std::string& name, const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat("worker ", name, ": ", status.message()));
}

}  // namespace

SegmentRunner::SegmentRunner(SegmentRunnerOptions options)
    : options_(std::move(options)),
      datasets_(std::make_unique<DatasetCache>(
          static_cast<size_t>(options_.max_cached_datasets))),
      thread_([this] { Loop(); }) {}

SegmentRunner::~SegmentRunner() { Shutdown(); }

absl::Status SegmentRunner::TrySubmit(
    const SegmentTask& task, std::shared_ptr<SegmentObserver> observer) {
  // Cheap checks that need no data run here, so a malformed request is
  // answered at once and never occupies the worker.
  const pnn::v1::DatasetSpec dataset = EffectiveDataset(task);
  auto directory = ResolveDatasetDirectory(options_.data_dir, dataset,
                                           /*allow_absolute=*/false);
  if (!directory.ok()) {
    return WithWorker(options_.worker_name, directory.status());
  }
  // A worker trains on the device it was started with (and registered
  // with the coordinator); a task that needs CUDA must not quietly run on
  // a CPU worker.
  if (absl::StartsWith(task.device(), "cuda") &&
      !absl::StartsWith(options_.device, "cuda")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker ", options_.worker_name, " trains on \"", options_.device,
        "\" but the task asks for \"", task.device(),
        "\"; send it to a worker started with --device=cuda[:N]"));
  }

  auto job = std::make_shared<Job>();
  job->task = task;
  job->observer = std::move(observer);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      return absl::UnavailableError(
          absl::StrCat("worker ", options_.worker_name, " is shutting down"));
    }
    const std::shared_ptr<Job>& current = running_ ? running_ : queued_;
    if (current) {
      return absl::ResourceExhaustedError(
          absl::StrCat("worker busy training ", Describe(current->task)));
    }
    queued_ = std::move(job);
  }
  wake_.notify_all();
  return absl::OkStatus();
}

bool SegmentRunner::Cancel(const std::string& job_id, int segment_index) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const std::shared_ptr<Job>& job : {running_, queued_}) {
    if (job && job->task.job_id() == job_id &&
        job->task.segment_index() == segment_index) {
      int none = static_cast<int>(StopReason::kNone);
      job->stop.compare_exchange_strong(
          none, static_cast<int>(StopReason::kCancelSegment));
      return true;
    }
  }
  return false;
}

bool SegmentRunner::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return running_ != nullptr || queued_ != nullptr;
}

void SegmentRunner::RequestStop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (const std::shared_ptr<Job>& job : {running_, queued_}) {
      if (!job) continue;
      int none = static_cast<int>(StopReason::kNone);
      job->stop.compare_exchange_strong(
          none, static_cast<int>(StopReason::kShutdown));
    }
  }
  wake_.notify_all();
}

void SegmentRunner::Shutdown() {
  RequestStop();
  // Only the owner calls Shutdown (and the destructor), never concurrently.
  if (thread_.joinable()) thread_.join();
}

void SegmentRunner::Loop() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || queued_ != nullptr; });
      // A job queued before Shutdown still runs: its stop flag is set, so
      // it ends at once with CANCELLED and its observer hears about it.
      if (!queued_) return;
      job = std::move(queued_);
      running_ = job;
    }
    pnn::v1::SegmentResult result;
    absl::Status status;
    if (options_.metrics != nullptr) options_.metrics->busy.Set(1);
    const auto start = std::chrono::steady_clock::now();
    try {
      status = Run(*job, &result);
    } catch (const std::exception& error) {
      // common/ turns libtorch errors into statuses; this is the last line
      // of defence so that nothing can take the whole worker down.
      status = absl::InternalError(
          absl::StrCat("worker ", options_.worker_name,
                       ": unexpected error: ", error.what()));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    // The worker is free before the client hears the end of the stream, so
    // the coordinator can send the next task as soon as it has the result.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      running_.reset();
    }
    if (options_.metrics != nullptr) {
      options_.metrics->RecordOutcome(status);
      options_.metrics->busy.Set(0);
    }
    if (status.ok()) {
      LogLine(absl::StrCat(Describe(job->task), " done in ", seconds, " s"));
      TrainSegmentUpdate update;
      *update.mutable_result() = std::move(result);
      job->observer->OnUpdate(std::move(update));
    } else {
      LogLine(absl::StrCat(Describe(job->task), " ended after ", seconds,
                           " s: ", status.ToString()));
    }
    job->observer->OnFinish(status);
  }
}

absl::Status SegmentRunner::Run(Job& job, pnn::v1::SegmentResult* result) {
  SegmentTask task = job.task;
  SegmentObserver& observer = *job.observer;
  auto stop_reason = [&job] {
    return static_cast<StopReason>(job.stop.load());
  };
  auto should_stop = [&] {
    return stop_reason() != StopReason::kNone || observer.Abandoned();
  };
  auto cancelled = [&](const absl::Status& status) {
    switch (stop_reason()) {
      case StopReason::kCancelSegment:
        return absl::CancelledError(absl::StrCat(
            "segment cancelled by CancelSegment (", status.message(), ")"));
      case StopReason::kShutdown:
        return absl::CancelledError(
            absl::StrCat("worker ", options_.worker_name, " is shutting down (",
                         status.message(), ")"));
      default:
        return status;  // the client cancelled; nobody reads this
    }
  };

  LogLine(absl::StrCat("training ", Describe(task), " (layers ",
                       task.first_layer(), "..", task.last_layer(), ") on ",
                       options_.device, " with ", options_.threads,
                       " threads"));
  {
    TrainSegmentUpdate update;
    auto* started = update.mutable_started();
    started->set_worker_name(options_.worker_name);
    started->set_device(options_.device);
    started->set_threads(options_.threads);
    observer.OnUpdate(std::move(update));
  }

  const pnn::v1::DatasetSpec dataset = EffectiveDataset(task);
  auto directory = ResolveDatasetDirectory(options_.data_dir, dataset,
                                           /*allow_absolute=*/false);
  if (!directory.ok()) {
    return WithWorker(options_.worker_name, directory.status());
  }
  if (should_stop()) return cancelled(absl::CancelledError("before loading"));
  auto data = datasets_->Get(*directory, dataset);
  if (!data.ok()) {
    // The proto promises FAILED_PRECONDITION for a missing data set: the
    // request may be fine, this worker's disk is not.
    const absl::StatusCode code =
        data.status().code() == absl::StatusCode::kNotFound
            ? absl::StatusCode::kFailedPrecondition
            : data.status().code();
    return absl::Status(code, absl::StrCat("worker ", options_.worker_name,
                                           " (--data_dir=", options_.data_dir,
                                           "): ", data.status().message()));
  }

  TrainOptions train_options;
  train_options.device = options_.device;
  train_options.threads = options_.threads;
  train_options.batch_report_interval = options_.batch_report_interval;
  train_options.should_stop = should_stop;
  WorkerMetrics* const exported = options_.metrics;
  train_options.on_epoch = [&observer, exported](
                               const pnn::v1::EpochMetrics& metrics,
                               const MlpSegment&) {
    if (exported != nullptr) {
      exported->epochs.Increment();
      exported->epoch_duration.Observe(metrics.seconds());
      exported->training_loss.Set(metrics.train_loss());
      exported->samples_per_second.Set(metrics.samples_per_second());
      exported->training_memory.Set(
          static_cast<double>(metrics.peak_rss_growth_bytes()));
    }
    TrainSegmentUpdate update;
    *update.mutable_epoch() = metrics;
    observer.OnUpdate(std::move(update));
  };
  train_options.on_batches = [&observer, exported](int epoch, int64_t done,
                                                   int64_t per_epoch,
                                                   double loss) {
    if (exported != nullptr) exported->training_loss.Set(loss);
    TrainSegmentUpdate update;
    auto* progress = update.mutable_progress();
    progress->set_epoch(epoch);
    progress->set_batches_done(done);
    progress->set_batches_per_epoch(per_epoch);
    progress->set_loss(loss);
    observer.OnUpdate(std::move(update));
  };
  // TrainSegment prefers the task's device over TrainOptions::device; the
  // worker's own device is the one that counts (checked in TrySubmit).
  task.set_device(options_.device);
  auto trained = TrainSegment(task, **data, train_options);
  if (!trained.ok()) {
    if (trained.status().code() == absl::StatusCode::kCancelled) {
      return cancelled(trained.status());
    }
    return WithWorker(options_.worker_name, trained.status());
  }
  *result = *std::move(trained);
  return absl::OkStatus();
}

}  // namespace worker
}  // namespace pnn
