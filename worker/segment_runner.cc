#include "worker/segment_runner.h"

#include <chrono>
#include <cmath>
#include <exception>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/dataset_cache.h"
#include "common/job_spec.h"
#include "common/layer_profile.h"
#include "common/status_macros.h"
#include "common/trainer.h"
#include "worker/log.h"
#include "worker/metrics.h"
#include "worker/pipeline_link.h"
#include "worker/stage_runner.h"

namespace pnn {
namespace worker {
namespace {

using pnn::v1::SegmentTask;
using pnn::v1::StageForwardRequest;
using pnn::v1::StageForwardResponse;
using pnn::v1::TrainSegmentUpdate;

std::string Describe(const SegmentTask& task) {
  return absl::StrCat("job ", task.job_id(),
                      task.recovery() ? " recovery stage " : " segment ",
                      task.segment_index());
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

// A stage after the first of a model-parallel pipeline.
bool IsLaterStage(const SegmentTask& task) {
  return task.has_pipeline() && task.segment_index() > 0;
}

bool HasNextStage(const SegmentTask& task) {
  return task.has_pipeline() &&
         task.segment_index() + 1 < task.segment_count();
}

std::string StageKey(const std::string& job_id, const std::string& session,
                     int stage) {
  return absl::StrCat(job_id, "/", session, "/", stage);
}

// Feeds pnn_worker_samples_trained_total while an epoch runs (full batches,
// at each batch report) and tops it up to the epoch's exact sample count at
// its end (the last batch may be short). Called on the training thread.
class SampleCounter {
 public:
  SampleCounter(prometheus::Counter& counter, int64_t batch_size)
      : counter_(counter), batch_size_(batch_size) {}

  void OnBatches(int64_t done, int64_t per_epoch) {
    if (done < per_epoch) Add(done * batch_size_ - counted_);
  }
  void OnEpoch(const pnn::v1::EpochMetrics& metrics) {
    // samples_per_second is the epoch's samples over its seconds.
    Add(std::llround(metrics.samples_per_second() * metrics.seconds()) -
        counted_);
    counted_ = 0;
  }

 private:
  void Add(int64_t samples) {
    if (samples <= 0) return;
    counter_.Increment(static_cast<double>(samples));
    counted_ += samples;
  }

  prometheus::Counter& counter_;
  const int64_t batch_size_;
  int64_t counted_ = 0;  // in the running epoch
};

// The callbacks that turn training events into TrainSegment updates (and
// metrics); the same for a segment and for any pipeline stage.
TrainOptions MakeTrainOptions(const SegmentRunnerOptions& options,
                              const SegmentTask& task,
                              SegmentObserver& observer,
                              std::function<bool()> should_stop) {
  TrainOptions train_options;
  train_options.device = options.device;
  train_options.threads = options.threads;
  train_options.batch_report_interval = options.batch_report_interval;
  train_options.should_stop = std::move(should_stop);
  WorkerMetrics* const exported = options.metrics;
  prometheus::Gauge* const segment_loss =
      exported != nullptr ? &exported->SegmentLoss(task) : nullptr;
  const auto samples =
      exported != nullptr
          ? std::make_shared<SampleCounter>(exported->samples_trained,
                                            task.training().batch_size())
          : nullptr;
  train_options.on_epoch = [&observer, exported, segment_loss, samples](
                               const pnn::v1::EpochMetrics& metrics,
                               const SegmentModel&) {
    if (exported != nullptr) {
      exported->epochs.Increment();
      exported->epoch_duration.Observe(metrics.seconds());
      exported->training_loss.Set(metrics.train_loss());
      segment_loss->Set(metrics.train_loss());
      exported->samples_per_second.Set(metrics.samples_per_second());
      samples->OnEpoch(metrics);
      exported->training_memory.Set(
          static_cast<double>(metrics.peak_rss_growth_bytes()));
      exported->device_peak_memory.Set(
          static_cast<double>(metrics.device_peak_allocated_bytes()));
    }
    TrainSegmentUpdate update;
    *update.mutable_epoch() = metrics;
    observer.OnUpdate(std::move(update));
  };
  train_options.on_batches = [&observer, exported, segment_loss, samples](
                                 int epoch, int64_t done, int64_t per_epoch,
                                 double loss) {
    if (exported != nullptr) {
      exported->training_loss.Set(loss);
      segment_loss->Set(loss);
      samples->OnBatches(done, per_epoch);
    }
    TrainSegmentUpdate update;
    auto* progress = update.mutable_progress();
    progress->set_epoch(epoch);
    progress->set_batches_done(done);
    progress->set_batches_per_epoch(per_epoch);
    progress->set_loss(loss);
    observer.OnUpdate(std::move(update));
  };
  train_options.on_checkpoint = [&observer](pnn::v1::Checkpoint checkpoint) {
    TrainSegmentUpdate update;
    *update.mutable_checkpoint() = std::move(checkpoint);
    observer.OnUpdate(std::move(update));
  };
  return train_options;
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
  // (A profiling task reads no data.)
  const pnn::v1::DatasetSpec dataset = EffectiveDataset(task);
  auto directory = ResolveDatasetDirectory(options_.data_dir, dataset,
                                           /*allow_absolute=*/false);
  if (!directory.ok() && !task.has_profile()) {
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

  if (task.has_pipeline()) {
    if (task.pipeline().session_id().empty()) {
      return absl::InvalidArgumentError(
          "a pipeline task needs pipeline.session_id (set by the "
          "coordinator when it places the stages)");
    }
    if (HasNextStage(task) != !task.pipeline().downstream_address().empty()) {
      return absl::InvalidArgumentError(
          "every pipeline stage but the last needs "
          "pipeline.downstream_address, and the last has none");
    }
    if (HasNextStage(task) && !options_.connect_downstream) {
      return absl::FailedPreconditionError(absl::StrCat(
          "worker ", options_.worker_name,
          " cannot call other workers, so it cannot run a pipeline stage "
          "with a next stage"));
    }
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

absl::Status SegmentRunner::Preload(const std::string& path) {
  pnn::v1::DatasetSpec spec;
  spec.set_path(path);
  PNN_ASSIGN_OR_RETURN(std::string directory,
                       ResolveDatasetDirectory(options_.data_dir, spec,
                                               /*allow_absolute=*/false));
  const auto start = std::chrono::steady_clock::now();
  auto data = datasets_->Get(directory, spec);
  if (!data.ok()) {
    return absl::Status(data.status().code(),
                        absl::StrCat("preloading data set \"", path,
                                     "\": ", data.status().message()));
  }
  LogLine(absl::StrCat(
      "preloaded ", directory, " (", (*data)->train.size(), " + ",
      (*data)->test.size(), " samples) in ",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count(),
      " s"));
  return absl::OkStatus();
}

bool SegmentRunner::Cancel(const std::string& job_id, int segment_index) {
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const std::shared_ptr<Job>& job : {running_, queued_}) {
      if (job && job->task.job_id() == job_id &&
          job->task.segment_index() == segment_index) {
        int none = static_cast<int>(StopReason::kNone);
        job->stop.compare_exchange_strong(
            none, static_cast<int>(StopReason::kCancelSegment));
        found = true;
        break;
      }
    }
  }
  // A pipeline stage waiting for its next batch stops now.
  if (found) stage_wake_.notify_all();
  return found;
}

absl::Status SegmentRunner::SubmitStageBatch(
    const StageForwardRequest* request, StageForwardResponse* response,
    StageBatchDone done) {
  const std::string key = StageKey(request->job_id(), request->session_id(),
                                   request->stage_index());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      return absl::UnavailableError(
          absl::StrCat("worker ", options_.worker_name, " is shutting down"));
    }
    const std::shared_ptr<Job>& current = running_ ? running_ : queued_;
    if (!current) {
      if (key == ended_stage_) {
        return absl::FailedPreconditionError(absl::StrCat(
            "worker ", options_.worker_name, ": ",
            DescribeStage(request->job_id(), request->session_id(),
                          request->stage_index()),
            " has ended here: ", ended_stage_status_.ToString()));
      }
      // The coordinator starts the stages together; the call may simply
      // have overtaken this stage's TrainSegment.
      return absl::UnavailableError(absl::StrCat(
          "worker ", options_.worker_name, " runs no pipeline stage (yet): ",
          DescribeStage(request->job_id(), request->session_id(),
                        request->stage_index()),
          " has not started here"));
    }
    const SegmentTask& task = current->task;
    if (!IsLaterStage(task) || task.job_id() != request->job_id() ||
        task.pipeline().session_id() != request->session_id() ||
        task.segment_index() != request->stage_index()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "worker ", options_.worker_name, " runs ",
          IsLaterStage(task)
              ? DescribeStage(task.job_id(), task.pipeline().session_id(),
                              task.segment_index())
              : Describe(task),
          ", not ",
          DescribeStage(request->job_id(), request->session_id(),
                        request->stage_index())));
    }
    if (current->stage_closed) {
      return absl::FailedPreconditionError(absl::StrCat(
          "worker ", options_.worker_name, ": ",
          DescribeStage(request->job_id(), request->session_id(),
                        request->stage_index()),
          " has ended"));
    }
    current->stage_calls.push_back({request, response, std::move(done)});
  }
  stage_wake_.notify_all();
  return absl::OkStatus();
}

void SegmentRunner::CloseStage(Job& job, const absl::Status& status) {
  std::deque<StageCall> waiting;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (job.stage_closed) return;
    job.stage_closed = true;
    waiting.swap(job.stage_calls);
    if (IsLaterStage(job.task)) {
      ended_stage_ = StageKey(job.task.job_id(),
                              job.task.pipeline().session_id(),
                              job.task.segment_index());
      ended_stage_status_ = status;
    }
  }
  for (StageCall& call : waiting) call.done(status);
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
  stage_wake_.notify_all();
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
    // StageForward calls that came too late get an answer; a stage that
    // ended on its own has closed its intake with a better reason already.
    CloseStage(*job, status.ok() ? absl::FailedPreconditionError(
                                       "the pipeline stage has finished")
                                 : status);
    // The worker is free before the client hears the end of the stream, so
    // the coordinator can send the next task as soon as it has the result.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      running_.reset();
    }
    if (options_.metrics != nullptr) {
      // A profiling pass trains no segment: it is not counted as one.
      if (!job->task.has_profile()) options_.metrics->RecordOutcome(status);
      options_.metrics->busy.Set(0);
      if (status.ok() && job->task.has_pipeline()) {
        options_.metrics->pipeline_idle.Set(result.cost().idle_fraction());
      }
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

// The queue of StageForward calls that SubmitStageBatch fills for `job`,
// under the runner's lock.
class SegmentRunner::JobIntake final : public StageIntake {
 public:
  JobIntake(SegmentRunner& runner, Job& job) : runner_(runner), job_(job) {}

  std::optional<StageCall> Next(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(runner_.mutex_);
    runner_.stage_wake_.wait_for(lock, timeout, [this] {
      return !job_.stage_calls.empty() ||
             job_.stop.load() != static_cast<int>(StopReason::kNone);
    });
    if (job_.stage_calls.empty()) return std::nullopt;
    StageCall call = std::move(job_.stage_calls.front());
    job_.stage_calls.pop_front();
    return call;
  }

  void Close(const absl::Status& status) override {
    runner_.CloseStage(job_, status);
  }

 private:
  SegmentRunner& runner_;
  Job& job_;
};

bool SegmentRunner::ShouldStop(const Job& job) const {
  return job.stop.load() != static_cast<int>(StopReason::kNone) ||
         job.observer->Abandoned();
}

absl::Status SegmentRunner::StopStatus(const Job& job,
                                       const absl::Status& status) const {
  switch (static_cast<StopReason>(job.stop.load())) {
    case StopReason::kCancelSegment:
      return absl::CancelledError(absl::StrCat(
          "segment cancelled by CancelSegment (", status.message(), ")"));
    case StopReason::kShutdown:
      // UNAVAILABLE, not CANCELLED: the coordinator drops a worker that
      // is unavailable instead of handing it the retry.
      return absl::UnavailableError(
          absl::StrCat("worker ", options_.worker_name, " is shutting down (",
                       status.message(), ")"));
    default:
      return status;  // the client cancelled; nobody reads this
  }
}

absl::Status SegmentRunner::EndStatus(const Job& job,
                                      const absl::Status& status) const {
  if (status.code() == absl::StatusCode::kCancelled) {
    return StopStatus(job, status);
  }
  return WithWorker(options_.worker_name, status);
}

absl::Status SegmentRunner::Run(Job& job, pnn::v1::SegmentResult* result) {
  const SegmentTask& task = job.task;
  LogLine(absl::StrCat(task.has_profile() ? "profiling " : "training ",
                       Describe(task), " (layers ", task.first_layer(), "..",
                       task.last_layer(), ") on ", options_.device, " with ",
                       options_.threads, " threads"));
  {
    TrainSegmentUpdate update;
    auto* started = update.mutable_started();
    started->set_worker_name(options_.worker_name);
    started->set_device(options_.device);
    started->set_threads(options_.threads);
    job.observer->OnUpdate(std::move(update));
  }
  if (task.has_profile()) return RunProfile(job, result);
  // Later pipeline stages get their inputs and labels from the previous
  // stage: no data set to load.
  if (IsLaterStage(task)) return RunStage(job, result);
  return RunSegment(job, result);
}

absl::Status SegmentRunner::RunProfile(Job& job,
                                       pnn::v1::SegmentResult* result) {
  const SegmentTask& task = job.task;
  if (absl::Status threads = SetTrainingThreads(options_.threads);
      !threads.ok()) {
    return threads;
  }
  auto seconds = ProfileLayers(TaskArchitecture(task), task.training(),
                               task.profile().batches(), options_.device);
  if (!seconds.ok()) return EndStatus(job, seconds.status());
  result->set_segment_index(task.segment_index());
  for (double layer : *seconds) result->add_layer_seconds_per_batch(layer);
  return absl::OkStatus();
}

absl::Status SegmentRunner::RunSegment(Job& job,
                                       pnn::v1::SegmentResult* result) {
  SegmentTask task = job.task;
  const std::function<bool()> should_stop = [this, &job] {
    return ShouldStop(job);
  };
  const pnn::v1::DatasetSpec dataset = EffectiveDataset(task);
  auto directory = ResolveDatasetDirectory(options_.data_dir, dataset,
                                           /*allow_absolute=*/false);
  if (!directory.ok()) {
    return WithWorker(options_.worker_name, directory.status());
  }
  if (should_stop()) {
    return StopStatus(job, absl::CancelledError("before loading"));
  }
  // A segment that trains on SIL reads only the labels.
  auto data = datasets_->Get(*directory, dataset,
                             task.input_case() == SegmentTask::kInputSil
                                 ? DatasetContent::kLabelsOnly
                                 : DatasetContent::kAll);
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

  TrainOptions train_options =
      MakeTrainOptions(options_, task, *job.observer, should_stop);
  // The first stage of a pipeline: every micro-batch's output goes to the
  // next stage, whose answer is the gradient to backpropagate.
  std::unique_ptr<PipelineLink> link;
  if (HasNextStage(task)) {
    link = PipelineLink::Connect(options_, task, should_stop);
    train_options.pipeline_peer = link.get();
  } else if (task.has_pipeline()) {
    // A one-stage pipeline is the whole network on this worker.
    task.clear_pipeline();
  }
  // TrainSegment prefers the task's device over TrainOptions::device; the
  // worker's own device is the one that counts (checked in TrySubmit).
  task.set_device(options_.device);
  auto trained = TrainSegment(task, **data, train_options);
  if (!trained.ok()) return EndStatus(job, trained.status());
  *result = *std::move(trained);
  if (link != nullptr) {
    // The stages after this one return their results once they hear that
    // training is over.
    if (absl::Status finished = link->Finish(); !finished.ok()) {
      return EndStatus(job, finished);
    }
    result->mutable_cost()->set_peer_bytes_sent(link->bytes_sent());
    result->mutable_cost()->set_peer_bytes_received(link->bytes_received());
  }
  return absl::OkStatus();
}

absl::Status SegmentRunner::RunStage(Job& job,
                                     pnn::v1::SegmentResult* result) {
  const std::function<bool()> should_stop = [this, &job] {
    return ShouldStop(job);
  };
  JobIntake intake(*this, job);
  StageRunner stage(options_, job.task, &intake, should_stop,
                    [this, &job](const absl::Status& status) {
                      return EndStatus(job, status);
                    });
  return stage.Run(
      MakeTrainOptions(options_, job.task, *job.observer, should_stop),
                   result);
}

}  // namespace worker
}  // namespace pnn
