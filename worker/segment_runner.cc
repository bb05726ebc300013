#include "worker/segment_runner.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/dataset_cache.h"
#include "common/job_spec.h"
#include "common/pipeline.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "common/trainer.h"
#include "worker/log.h"
#include "worker/metrics.h"

namespace pnn {
namespace worker {
namespace {

using pnn::v1::SegmentTask;
using pnn::v1::StageForwardRequest;
using pnn::v1::StageForwardResponse;
using pnn::v1::TrainSegmentUpdate;
using Clock = std::chrono::steady_clock;

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

std::string DescribeStage(const std::string& job_id,
                          const std::string& session, int stage) {
  return absl::StrCat("pipeline stage ", stage, " of job ", job_id,
                      " (session ", session, ")");
}

// The callbacks that turn training events into TrainSegment updates (and
// metrics); the same for a segment and for any pipeline stage.
TrainOptions MakeTrainOptions(const SegmentRunnerOptions& options,
                              SegmentObserver& observer,
                              std::function<bool()> should_stop) {
  TrainOptions train_options;
  train_options.device = options.device;
  train_options.threads = options.threads;
  train_options.batch_report_interval = options.batch_report_interval;
  train_options.should_stop = std::move(should_stop);
  WorkerMetrics* const exported = options.metrics;
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
  train_options.on_checkpoint = [&observer](pnn::v1::Checkpoint checkpoint) {
    TrainSegmentUpdate update;
    *update.mutable_checkpoint() = std::move(checkpoint);
    observer.OnUpdate(std::move(update));
  };
  return train_options;
}

// A stage's connection to the next stage: one StageForward per batch,
// retried while the next stage answers UNAVAILABLE (its task not started
// yet), with the bytes that crossed counted. Training thread only.
class PipelineLink {
 public:
  PipelineLink(std::unique_ptr<DownstreamStage> stage, const SegmentTask& task,
               int64_t retry_ms, std::function<bool()> should_stop,
               WorkerMetrics* metrics)
      : stage_(std::move(stage)),
        job_id_(task.job_id()),
        session_(task.pipeline().session_id()),
        next_index_(task.segment_index() + 1),
        address_(task.pipeline().downstream_address()),
        retry_ms_(retry_ms),
        should_stop_(std::move(should_stop)),
        metrics_(metrics) {}

  // The rest of the pipeline's loss gradient for this stage's `output`.
  absl::StatusOr<RemoteLoss> Send(const at::Tensor& output,
                                  const at::Tensor& labels,
                                  const BatchPosition& position) {
    StageForwardRequest request = NewRequest();
    *request.mutable_activations() = TensorToProto("activations", output);
    const at::Tensor classes = labels.to(at::kCPU, at::kLong).contiguous();
    const int64_t* values = classes.data_ptr<int64_t>();
    auto* field = request.mutable_labels();
    field->Reserve(static_cast<int>(classes.numel()));
    for (int64_t i = 0; i < classes.numel(); ++i) {
      field->Add(static_cast<int32_t>(values[i]));
    }
    request.set_epoch(position.epoch);
    request.set_batch(position.batch);
    request.set_batches_per_epoch(position.batches_per_epoch);
    request.set_checkpoint(position.checkpoint);
    StageForwardResponse response;
    PNN_RETURN_IF_ERROR(Call(request, &response));
    auto gradient = TensorFromProto(response.input_gradient());
    if (!gradient.ok()) {
      return absl::DataLossError(absl::StrCat(
          Describe(), " returned an unreadable gradient: ",
          gradient.status().message()));
    }
    return RemoteLoss{*std::move(gradient), response.loss()};
  }

  // Tells the next stage that training is over; it answers once it (and
  // every stage after it) has its result.
  absl::Status Finish() {
    StageForwardRequest request = NewRequest();
    request.set_finish(true);
    StageForwardResponse response;
    return Call(request, &response);
  }

  int64_t bytes_sent() const { return bytes_sent_; }
  int64_t bytes_received() const { return bytes_received_; }

 private:
  StageForwardRequest NewRequest() const {
    StageForwardRequest request;
    request.set_job_id(job_id_);
    request.set_session_id(session_);
    request.set_stage_index(next_index_);
    return request;
  }

  std::string Describe() const {
    return absl::StrCat("the next pipeline stage (segment ", next_index_ + 1,
                        " at ", address_, ")");
  }

  absl::Status Call(const StageForwardRequest& request,
                    StageForwardResponse* response) {
    const Clock::time_point start = Clock::now();
    int64_t backoff_ms = 20;
    for (;;) {
      response->Clear();
      absl::Status status = stage_->Forward(request, response, should_stop_);
      if (status.ok()) {
        const auto sent = static_cast<int64_t>(request.ByteSizeLong());
        const auto received = static_cast<int64_t>(response->ByteSizeLong());
        bytes_sent_ += sent;
        bytes_received_ += received;
        if (metrics_ != nullptr) {
          metrics_->peer_sent_bytes.Increment(static_cast<double>(sent));
          metrics_->peer_received_bytes.Increment(
              static_cast<double>(received));
        }
        return absl::OkStatus();
      }
      if (should_stop_()) {
        return absl::CancelledError(
            absl::StrCat("stopped while waiting for ", Describe()));
      }
      if (status.code() == absl::StatusCode::kCancelled) {
        // The next stage was stopped (its worker shut down, or the
        // coordinator stopped it): ABORTED, so that nobody takes this
        // stage's own worker for the one going away.
        return absl::AbortedError(
            absl::StrCat(Describe(), " was stopped: ", status.message()));
      }
      if (status.code() != absl::StatusCode::kUnavailable) {
        return absl::Status(status.code(), absl::StrCat(Describe(), ": ",
                                                        status.message()));
      }
      const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                              Clock::now() - start)
                              .count();
      if (waited >= retry_ms_) {
        // ABORTED, not UNAVAILABLE: this worker is fine, its neighbour is
        // not, and the coordinator must not drop this worker for it.
        return absl::AbortedError(absl::StrCat(
            Describe(), " did not take the batch within ", retry_ms_ / 1000.0,
            " s: ", status.message()));
      }
      // Sleep in short slices so that a stop is noticed at once.
      const Clock::time_point wake =
          Clock::now() + std::chrono::milliseconds(backoff_ms);
      while (Clock::now() < wake && !should_stop_()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      backoff_ms = std::min<int64_t>(backoff_ms * 2, 500);
    }
  }

  const std::unique_ptr<DownstreamStage> stage_;
  const std::string job_id_;
  const std::string session_;
  const int next_index_;
  const std::string address_;
  const int64_t retry_ms_;
  const std::function<bool()> should_stop_;
  WorkerMetrics* const metrics_;
  int64_t bytes_sent_ = 0;
  int64_t bytes_received_ = 0;
};

// One StageForward call taken off the queue; whatever happens, its caller
// gets exactly one answer (a gRPC call left unanswered would also hold up
// the server's shutdown).
class PendingStageCall {
 public:
  explicit PendingStageCall(StageBatchDone done) : done_(std::move(done)) {}
  ~PendingStageCall() {
    Complete(absl::InternalError("the pipeline stage ended unexpectedly"));
  }
  PendingStageCall(const PendingStageCall&) = delete;
  PendingStageCall& operator=(const PendingStageCall&) = delete;

  void Complete(const absl::Status& status) {
    if (done_) {
      StageBatchDone done = std::move(done_);
      done_ = nullptr;
      done(status);
    }
  }

 private:
  StageBatchDone done_;
};

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
        // UNAVAILABLE, not CANCELLED: the coordinator drops a worker that
        // is unavailable instead of handing it the retry.
        return absl::UnavailableError(
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
  // Later pipeline stages get their inputs and labels from the previous
  // stage: no data set to load.
  if (IsLaterStage(task)) return RunStage(job, should_stop, cancelled, result);

  const pnn::v1::DatasetSpec dataset = EffectiveDataset(task);
  auto directory = ResolveDatasetDirectory(options_.data_dir, dataset,
                                           /*allow_absolute=*/false);
  if (!directory.ok()) {
    return WithWorker(options_.worker_name, directory.status());
  }
  if (should_stop()) return cancelled(absl::CancelledError("before loading"));
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
      MakeTrainOptions(options_, observer, should_stop);
  // The first stage of a pipeline: every batch's output goes to the next
  // stage, whose answer is the gradient to backpropagate.
  std::unique_ptr<PipelineLink> link;
  if (HasNextStage(task)) {
    link = std::make_unique<PipelineLink>(
        options_.connect_downstream(task.pipeline().downstream_address()),
        task, options_.downstream_retry_ms, should_stop, options_.metrics);
    train_options.remote_loss = [&link](const at::Tensor& output,
                                        const at::Tensor& labels,
                                        const BatchPosition& position) {
      return link->Send(output, labels, position);
    };
  } else if (task.has_pipeline()) {
    // A one-stage pipeline is the whole network on this worker.
    task.clear_pipeline();
  }
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
  if (link != nullptr) {
    // The stages after this one return their results once they hear that
    // training is over.
    if (absl::Status finished = link->Finish(); !finished.ok()) {
      if (finished.code() == absl::StatusCode::kCancelled) {
        return cancelled(finished);
      }
      return WithWorker(options_.worker_name, finished);
    }
    result->mutable_cost()->set_peer_bytes_sent(link->bytes_sent());
    result->mutable_cost()->set_peer_bytes_received(link->bytes_received());
  }
  return absl::OkStatus();
}

absl::Status SegmentRunner::RunStage(
    Job& job, const std::function<bool()>& should_stop,
    const std::function<absl::Status(const absl::Status&)>& stop_status,
    pnn::v1::SegmentResult* result) {
  SegmentTask task = job.task;
  // The worker's own device counts (checked in TrySubmit).
  task.set_device(options_.device);
  const std::string name = DescribeStage(
      task.job_id(), task.pipeline().session_id(), task.segment_index());
  // Ends the task: closes the intake first, so that nothing new queues up
  // behind a stage that is gone.
  auto end = [&](const absl::Status& status) {
    const absl::Status named =
        status.code() == absl::StatusCode::kCancelled
            ? stop_status(status)
            : WithWorker(options_.worker_name, status);
    CloseStage(job, named);
    return named;
  };

  auto trainer = PipelineStageTrainer::Create(
      task, MakeTrainOptions(options_, *job.observer, should_stop));
  if (!trainer.ok()) return end(trainer.status());
  std::unique_ptr<PipelineLink> link;
  DownstreamLoss downstream;
  if (HasNextStage(task)) {
    link = std::make_unique<PipelineLink>(
        options_.connect_downstream(task.pipeline().downstream_address()),
        task, options_.downstream_retry_ms, should_stop, options_.metrics);
    downstream = [&link](const at::Tensor& output, const at::Tensor& labels,
                         const BatchPosition& position) {
      return link->Send(output, labels, position);
    };
  }
  const auto idle_limit =
      std::chrono::milliseconds(options_.stage_idle_timeout_ms);
  Clock::time_point last_call = Clock::now();
  for (;;) {
    std::optional<StageCall> call;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Polls as well: Abandoned() (the coordinator went away) and the idle
      // timeout notify nobody.
      stage_wake_.wait_for(lock, std::chrono::milliseconds(100), [&] {
        return !job.stage_calls.empty() ||
               job.stop.load() != static_cast<int>(StopReason::kNone);
      });
      if (!job.stage_calls.empty()) {
        call = std::move(job.stage_calls.front());
        job.stage_calls.pop_front();
      }
    }
    if (should_stop()) {
      const absl::Status status =
          end(absl::CancelledError(absl::StrCat(name, " stopped")));
      if (call) call->done(status);
      return status;
    }
    if (!call) {
      if (Clock::now() - last_call > idle_limit) {
        return end(absl::DeadlineExceededError(absl::StrCat(
            name, " received no batch from the previous stage for ",
            options_.stage_idle_timeout_ms / 1000.0,
            " s; the previous stage is gone or stuck")));
      }
      continue;
    }
    PendingStageCall answer(std::move(call->done));
    const StageForwardRequest& request = *call->request;
    if (request.finish()) {
      // The stages after this one first, so that every stage has its
      // result before the first stage reports success.
      const absl::Status forwarded =
          link != nullptr ? link->Finish() : absl::OkStatus();
      absl::StatusOr<pnn::v1::SegmentResult> finished =
          forwarded.ok() ? (*trainer)->Finish()
                         : absl::StatusOr<pnn::v1::SegmentResult>(forwarded);
      if (!finished.ok()) {
        const absl::Status status = end(finished.status());
        answer.Complete(status);
        return status;
      }
      *result = *std::move(finished);
      if (link != nullptr) {
        result->mutable_cost()->set_peer_bytes_sent(link->bytes_sent());
        result->mutable_cost()->set_peer_bytes_received(
            link->bytes_received());
      }
      CloseStage(job, absl::FailedPreconditionError(
                          absl::StrCat(name, " has finished")));
      answer.Complete(absl::OkStatus());
      return absl::OkStatus();
    }
    BatchPosition position;
    position.epoch = request.epoch();
    position.batch = request.batch();
    position.batches_per_epoch = request.batches_per_epoch();
    position.checkpoint = request.checkpoint();
    auto activations = TensorFromProto(request.activations());
    if (!activations.ok()) {
      const absl::Status status = end(absl::InvalidArgumentError(absl::StrCat(
          name, ": unreadable activations: ", activations.status().message())));
      answer.Complete(status);
      return status;
    }
    at::Tensor labels = at::empty({request.labels_size()}, at::kLong);
    int64_t* values = labels.data_ptr<int64_t>();
    for (int i = 0; i < request.labels_size(); ++i) {
      values[i] = request.labels(i);
    }
    auto step = (*trainer)->Step(*activations, labels, position, downstream);
    if (!step.ok()) {
      const absl::Status status = end(step.status());
      answer.Complete(status);
      return status;
    }
    *call->response->mutable_input_gradient() =
        TensorToProto("input_gradient", step->output_gradient);
    call->response->set_loss(step->loss);
    answer.Complete(absl::OkStatus());
    last_call = Clock::now();
  }
}

}  // namespace worker
}  // namespace pnn
