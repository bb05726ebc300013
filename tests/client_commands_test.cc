// pnnctl's commands against an in-process fake Coordinator (gRPC callback
// API on 127.0.0.1, port 0) that serves canned jobs, events and model
// bytes; and the pnnctl binary itself for flag handling and exit statuses.
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/job_request.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pnn/v1/coordinator.grpc.pb.h"

namespace pnn::client {
namespace {

using ::google::protobuf::util::TimeUtil;
using pnn::v1::Job;
using pnn::v1::JobEvent;
using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// Writes a fixed list of messages, then finishes OK; or, with `hold_open`,
// keeps the stream open until the client cancels (a coordinator that does
// not close the watch after the final event).
template <typename T>
class CannedWriter : public grpc::ServerWriteReactor<T> {
 public:
  CannedWriter(std::vector<T> items, bool hold_open)
      : items_(std::move(items)), hold_open_(hold_open) {
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status::CANCELLED);
      return;
    }
    Next();
  }
  void OnCancel() override {
    if (hold_open_ && next_ == items_.size()) {
      this->Finish(grpc::Status::CANCELLED);
    }
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (next_ < items_.size()) {
      this->StartWrite(&items_[next_++]);
    } else if (!hold_open_) {
      this->Finish(grpc::Status::OK);
    }
  }
  std::vector<T> items_;
  bool hold_open_;
  size_t next_ = 0;
};

template <typename T>
class ErrorWriter : public grpc::ServerWriteReactor<T> {
 public:
  explicit ErrorWriter(grpc::Status status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

google::protobuf::Timestamp At(int64_t seconds) {
  return TimeUtil::SecondsToTimestamp(1700000000 + seconds);
}

bool IsFinal(pnn::v1::JobState state) {
  return state == pnn::v1::JOB_STATE_SUCCEEDED ||
         state == pnn::v1::JOB_STATE_FAILED ||
         state == pnn::v1::JOB_STATE_CANCELLED;
}

Job MakeJob(const std::string& id, pnn::v1::JobState state, double progress) {
  Job job;
  job.set_job_id(id);
  job.mutable_spec()->set_name(absl::StrCat("name-", id));
  job.set_state(state);
  *job.mutable_create_time() = At(0);
  *job.mutable_start_time() = At(1);
  for (int i = 0; i < 2; ++i) {
    pnn::v1::TaskStatus* task = job.add_segments();
    task->set_segment_index(i);
    task->set_first_layer(3 * i + 1);
    task->set_last_layer(3 * i + 3);
    task->set_epochs_total(2);
    task->set_worker_id(absl::StrCat("w-", i + 1));
    task->set_progress(progress);
    task->set_state(progress >= 1 ? pnn::v1::TASK_STATE_SUCCEEDED
                                  : pnn::v1::TASK_STATE_RUNNING);
    *task->mutable_start_time() = At(2);
    if (progress >= 1) *task->mutable_end_time() = At(12 + i);
    task->set_bytes_sent(1000 + i);
    task->set_bytes_received(2000 + i);
  }
  if (IsFinal(state)) *job.mutable_end_time() = At(20);
  return job;
}

JobEvent Event(Job job, const std::string& message, int64_t second) {
  JobEvent event;
  *event.mutable_time() = At(second);
  event.set_message(message);
  *event.mutable_job() = std::move(job);
  return event;
}

class FakeCoordinator final : public pnn::v1::Coordinator::CallbackService {
 public:
  FakeCoordinator() {
    // job-ok: RUNNING -> SUCCEEDED.
    Job done = MakeJob("job-ok", pnn::v1::JOB_STATE_SUCCEEDED, 1.0);
    done.mutable_test()->set_accuracy(0.8794);
    done.mutable_test()->set_samples(10000);
    done.set_joined_test_accuracy(0.8791);
    done.set_bytes_sent(2001);
    done.set_bytes_received(4001);
    done.set_model_bytes(kModelSize);
    jobs_["job-ok"] = done;
    events_["job-ok"] = {
        Event(MakeJob("job-ok", pnn::v1::JOB_STATE_QUEUED, 0), "queued", 0),
        Event(MakeJob("job-ok", pnn::v1::JOB_STATE_RUNNING, 0.5),
              "segment 1 finished epoch 1", 5),
        Event(done, "job succeeded", 20)};
    // job-failed: RUNNING -> FAILED.
    Job failed = MakeJob("job-failed", pnn::v1::JOB_STATE_FAILED, 0.5);
    failed.set_message("segment 2: worker w-2 lost");
    failed.mutable_segments(1)->set_state(pnn::v1::TASK_STATE_FAILED);
    failed.mutable_segments(1)->set_error("worker w-2 lost");
    jobs_["job-failed"] = failed;
    events_["job-failed"] = {
        Event(MakeJob("job-failed", pnn::v1::JOB_STATE_RUNNING, 0.5), "running",
              3),
        Event(failed, "job failed", 9)};
    // job-cancelled: ends CANCELLED.
    Job cancelled = MakeJob("job-cancelled", pnn::v1::JOB_STATE_CANCELLED, 0.2);
    jobs_["job-cancelled"] = cancelled;
    events_["job-cancelled"] = {Event(cancelled, "cancelled by user", 4)};
    // job-cut: the stream ends while the job still runs.
    Job cut = MakeJob("job-cut", pnn::v1::JOB_STATE_RUNNING, 0.3);
    jobs_["job-cut"] = cut;
    events_["job-cut"] = {Event(cut, "running", 3)};
    // job-hold: final event, but the coordinator keeps the stream open.
    Job hold = MakeJob("job-hold", pnn::v1::JOB_STATE_SUCCEEDED, 1.0);
    jobs_["job-hold"] = hold;
    events_["job-hold"] = {Event(hold, "job succeeded", 20)};
    // job-running: for get and cancel.
    jobs_["job-running"] =
        MakeJob("job-running", pnn::v1::JOB_STATE_RUNNING, 0.4);

    // Model bytes: every byte value, several chunks.
    for (int i = 0; i < kModelSize; ++i)
      model_.push_back(static_cast<char>(i * 7));
  }

  static constexpr int kModelSize = 10000;
  const std::string& model() const { return model_; }
  // Chunks start at a wrong offset (a broken coordinator).
  void set_bad_offsets(bool bad) { bad_offsets_ = bad; }

  pnn::v1::SubmitJobRequest last_submit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_submit_;
  }
  pnn::v1::DownloadModelRequest last_download() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_download_;
  }
  std::vector<pnn::v1::ListJobsRequest> list_requests() {
    std::lock_guard<std::mutex> lock(mutex_);
    return list_requests_;
  }

  grpc::ServerUnaryReactor* SubmitJob(
      grpc::CallbackServerContext* context,
      const pnn::v1::SubmitJobRequest* request,
      pnn::v1::SubmitJobResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      last_submit_ = *request;
    }
    if (request->spec().training().epochs() > 10000) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "training.epochs: must be at most 10000"));
      return reactor;
    }
    // The job to watch afterwards is chosen by the spec's name.
    const std::string id =
        request->spec().name().empty() ? "job-ok" : request->spec().name();
    response->set_job_id(id);
    *response->mutable_job() = MakeJob(id, pnn::v1::JOB_STATE_QUEUED, 0);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const pnn::v1::GetJobRequest* request,
                                   Job* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    auto it = jobs_.find(request->job_id());
    if (it == jobs_.end()) {
      reactor->Finish(NotFound(request->job_id()));
    } else {
      *response = it->second;
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  // Pages over a fixed list of five jobs; the page token is the index of
  // the page's first job.
  grpc::ServerUnaryReactor* ListJobs(
      grpc::CallbackServerContext* context,
      const pnn::v1::ListJobsRequest* request,
      pnn::v1::ListJobsResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      list_requests_.push_back(*request);
    }
    std::vector<Job> all;
    for (int i = 0; i < 5; ++i) {
      const auto state = i % 2 == 0 ? pnn::v1::JOB_STATE_SUCCEEDED
                                    : pnn::v1::JOB_STATE_RUNNING;
      bool wanted = request->states().empty();
      for (int s : request->states()) wanted |= s == state;
      if (wanted) {
        all.push_back(MakeJob(absl::StrCat("list-", i), state,
                              state == pnn::v1::JOB_STATE_SUCCEEDED ? 1 : 0.5));
      }
    }
    int start = 0;
    if (!request->page_token().empty() &&
        !absl::SimpleAtoi(request->page_token(), &start)) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "page_token: not a token of ListJobs"));
      return reactor;
    }
    const int size = request->page_size() > 0 ? request->page_size() : 50;
    const int end = std::min<int>(start + size, all.size());
    for (int i = start; i < end; ++i) *response->add_jobs() = all[i];
    if (end < static_cast<int>(all.size())) {
      response->set_next_page_token(absl::StrCat(end));
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const pnn::v1::CancelJobRequest* request,
                                      Job* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    auto it = jobs_.find(request->job_id());
    if (it == jobs_.end()) {
      reactor->Finish(NotFound(request->job_id()));
      return reactor;
    }
    *response = it->second;
    if (!IsFinal(response->state())) {
      response->set_state(pnn::v1::JOB_STATE_CANCELLED);
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const pnn::v1::WatchJobRequest* request) override {
    auto it = events_.find(request->job_id());
    if (it == events_.end()) {
      return new ErrorWriter<JobEvent>(NotFound(request->job_id()));
    }
    return new CannedWriter<JobEvent>(it->second,
                                      request->job_id() == "job-hold");
  }

  grpc::ServerWriteReactor<pnn::v1::ModelChunk>* DownloadModel(
      grpc::CallbackServerContext* context,
      const pnn::v1::DownloadModelRequest* request) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      last_download_ = *request;
    }
    if (jobs_.count(request->job_id()) == 0) {
      return new ErrorWriter<pnn::v1::ModelChunk>(NotFound(request->job_id()));
    }
    if (request->job_id() != "job-ok") {
      return new ErrorWriter<pnn::v1::ModelChunk>(
          grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                       absl::StrCat("job ", request->job_id(),
                                    " has no model: it did not succeed")));
    }
    std::vector<pnn::v1::ModelChunk> chunks;
    constexpr int kChunk = 4096;
    for (int offset = 0; offset < kModelSize; offset += kChunk) {
      pnn::v1::ModelChunk chunk;
      // A hostile path: only its last component may be used.
      if (offset == 0) chunk.set_filename("../../etc/job-ok.safetensors");
      chunk.set_total_bytes(kModelSize);
      chunk.set_offset(bad_offsets_ && offset > 0 ? offset + 1 : offset);
      chunk.set_data(model_.substr(offset, kChunk));
      chunks.push_back(std::move(chunk));
    }
    return new CannedWriter<pnn::v1::ModelChunk>(std::move(chunks), false);
  }

 private:
  static grpc::Status NotFound(const std::string& id) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("job '", id, "' not found"));
  }

  std::map<std::string, Job> jobs_;
  std::map<std::string, std::vector<JobEvent>> events_;
  std::string model_;
  bool bad_offsets_ = false;
  std::mutex mutex_;
  pnn::v1::SubmitJobRequest last_submit_;
  pnn::v1::DownloadModelRequest last_download_;
  std::vector<pnn::v1::ListJobsRequest> list_requests_;
};

class CommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The standard health service, as the real coordinator would run it.
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&coordinator_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    target_ = absl::StrCat("127.0.0.1:", port);
    options_.coordinator = target_;
    options_.format.time_zone = absl::UTCTimeZone();
    options_.timeout = absl::Seconds(10);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  FakeCoordinator coordinator_;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
  ClientOptions options_;
  std::ostringstream out_;
  std::ostringstream err_;
};

TEST_F(CommandsTest, SubmitPrintsTheJobIdAlone) {
  SpecOverrides overrides;
  overrides.epochs = 2;
  overrides.baseline = true;
  auto request = BuildSubmitRequest("", overrides);
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(RunSubmit(options_, *request, /*watch=*/false, out_, err_), 0);
  EXPECT_EQ(out_.str(), "job-ok\n");
  EXPECT_THAT(err_.str(), IsEmpty());
  const pnn::v1::SubmitJobRequest sent = coordinator_.last_submit();
  EXPECT_EQ(sent.spec().training().epochs(), 2);
  EXPECT_TRUE(sent.conventional_baseline());
}

TEST_F(CommandsTest, SubmitJsonPrintsTheResponse) {
  options_.output = OutputFormat::kJson;
  EXPECT_EQ(RunSubmit(options_, pnn::v1::SubmitJobRequest(), false, out_, err_),
            0);
  EXPECT_THAT(out_.str(), HasSubstr("\"job_id\": \"job-ok\""));
  EXPECT_THAT(out_.str(), HasSubstr("\"state\": \"JOB_STATE_QUEUED\""));
}

TEST_F(CommandsTest, SubmitInvalidSpecExits2WithTheServersMessage) {
  pnn::v1::SubmitJobRequest request;
  request.mutable_spec()->mutable_training()->set_epochs(20000);
  EXPECT_EQ(RunSubmit(options_, request, false, out_, err_), 2);
  EXPECT_THAT(out_.str(), IsEmpty());
  EXPECT_THAT(err_.str(), StartsWith("INVALID_ARGUMENT: training.epochs: "
                                     "must be at most 10000"));
}

TEST_F(CommandsTest, SubmitWatchFollowsToTheEnd) {
  pnn::v1::SubmitJobRequest request;
  request.mutable_spec()->set_name("job-failed");
  EXPECT_EQ(RunSubmit(options_, request, /*watch=*/true, out_, err_), 3);
  EXPECT_THAT(out_.str(), StartsWith("job-failed\n"));
  EXPECT_THAT(out_.str(), HasSubstr("FAILED"));
}

TEST_F(CommandsTest, WatchOfASucceedingJobExits0AndPrintsTheTable) {
  EXPECT_EQ(RunWatch(options_, "job-ok", out_, err_), 0);
  const std::string out = out_.str();
  SCOPED_TRACE(out);
  // One line per event (not a terminal), then the result table.
  EXPECT_THAT(out, HasSubstr("22:13:20 QUEUED segment 1 0%, segment 2 0%: "
                             "queued\n"));
  EXPECT_THAT(out, HasSubstr("22:13:25 RUNNING segment 1 50%, segment 2 50%: "
                             "segment 1 finished epoch 1\n"));
  EXPECT_THAT(out, HasSubstr("22:13:40 SUCCEEDED segment 1 100%, segment 2 "
                             "100%: job succeeded\n"));
  EXPECT_THAT(out, HasSubstr("job job-ok (name-job-ok) SUCCEEDED in 19.0 s"));
  EXPECT_THAT(out, ContainsRegex("test accuracy \\(final\\) +87\\.94%"));
  EXPECT_THAT(out, ContainsRegex("joined, before recovery +87\\.91%"));
  EXPECT_THAT(out, ContainsRegex("segment 1 +1-3 +SUCCEEDED +w-1 +\\+1\\.0 s "
                                 "+\\+11\\.0 s +10\\.0 s"));
  EXPECT_THAT(out, ContainsRegex("segment 2 +4-6 +SUCCEEDED +w-2 +\\+1\\.0 s "
                                 "+\\+12\\.0 s +11\\.0 s"));
  EXPECT_THAT(out, HasSubstr("bytes on the wire (job total): 2.0 KiB sent, "
                             "3.9 KiB received"));
  EXPECT_THAT(err_.str(), IsEmpty());
}

TEST_F(CommandsTest, WatchRedrawsInPlaceOnATerminal) {
  options_.redraw = true;
  EXPECT_EQ(RunWatch(options_, "job-ok", out_, err_), 0);
  const std::string out = out_.str();
  // The second and third blocks move back over the 4 lines of the one
  // before (header, two segments, last event).
  EXPECT_THAT(out, HasSubstr("\x1b[4F\x1b[J"));
  EXPECT_THAT(out, HasSubstr("[########################] 100%"));
  EXPECT_THAT(out, ContainsRegex("test accuracy \\(final\\) +87\\.94%"));
}

TEST_F(CommandsTest, WatchOfAFailedJobExits3) {
  EXPECT_EQ(RunWatch(options_, "job-failed", out_, err_), 3);
  EXPECT_THAT(out_.str(), HasSubstr("errors:\n  segment 2: worker w-2 lost"));
  EXPECT_EQ(err_.str(),
            "job job-failed ended FAILED: segment 2: worker w-2 lost\n");
}

TEST_F(CommandsTest, WatchOfACancelledJobExits4) {
  EXPECT_EQ(RunWatch(options_, "job-cancelled", out_, err_), 4);
  EXPECT_THAT(err_.str(), HasSubstr("ended CANCELLED"));
}

TEST_F(CommandsTest, WatchThatEndsBeforeTheJobExits2) {
  EXPECT_EQ(RunWatch(options_, "job-cut", out_, err_), 2);
  EXPECT_THAT(err_.str(), HasSubstr("before the job ended (last state "
                                    "RUNNING); run `pnnctl watch job-cut` "
                                    "again"));
}

TEST_F(CommandsTest, WatchReturnsAtTheFinalEventEvenIfTheStreamStaysOpen) {
  EXPECT_EQ(RunWatch(options_, "job-hold", out_, err_), 0);
  EXPECT_THAT(out_.str(), HasSubstr("SUCCEEDED"));
}

TEST_F(CommandsTest, WatchJsonPrintsOneEventPerLine) {
  options_.output = OutputFormat::kJson;
  EXPECT_EQ(RunWatch(options_, "job-ok", out_, err_), 0);
  std::istringstream lines(out_.str());
  std::vector<std::string> events;
  for (std::string line; std::getline(lines, line);) events.push_back(line);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_THAT(events[2], AllOf(StartsWith("{"),
                               HasSubstr("\"state\":\"JOB_STATE_SUCCEEDED\""),
                               HasSubstr("\"accuracy\":0.8794")));
}

TEST_F(CommandsTest, WatchOfAnUnknownJobExits2) {
  EXPECT_EQ(RunWatch(options_, "nope", out_, err_), 2);
  EXPECT_THAT(err_.str(), StartsWith("NOT_FOUND: job 'nope' not found"));
}

TEST_F(CommandsTest, GetExits0WhateverTheState) {
  EXPECT_EQ(RunGet(options_, "job-failed", out_, err_), 0);
  EXPECT_THAT(out_.str(), ContainsRegex("state +FAILED: segment 2: worker w-2 "
                                        "lost"));
  out_.str("");
  EXPECT_EQ(RunGet(options_, "job-running", out_, err_), 0);
  EXPECT_THAT(out_.str(), HasSubstr("segment 2  L4-6"));
}

TEST_F(CommandsTest, GetJsonHasStateAndTestAccuracy) {
  options_.output = OutputFormat::kJson;
  EXPECT_EQ(RunGet(options_, "job-ok", out_, err_), 0);
  EXPECT_THAT(out_.str(), HasSubstr("\"state\": \"JOB_STATE_SUCCEEDED\""));
  EXPECT_THAT(out_.str(), ContainsRegex("\"test\": \\{\\s*\"accuracy\": "
                                        "0.8794"));
}

TEST_F(CommandsTest, GetUnknownJobExits2WithNotFound) {
  EXPECT_EQ(RunGet(options_, "nope", out_, err_), 2);
  EXPECT_THAT(err_.str(), StartsWith("NOT_FOUND: job 'nope' not found"));
}

TEST_F(CommandsTest, ListOnePageTellsHowToGetTheNext) {
  ListOptions list;
  list.page_size = 2;
  EXPECT_EQ(RunList(options_, list, out_, err_), 0);
  EXPECT_THAT(out_.str(), AllOf(HasSubstr("list-0"), HasSubstr("list-1"),
                                Not(HasSubstr("list-2"))));
  EXPECT_EQ(err_.str(), "more jobs: pnnctl list --page_token=2 (or --all)\n");
}

TEST_F(CommandsTest, ListAllFollowsEveryPage) {
  ListOptions list;
  list.page_size = 2;
  list.all = true;
  EXPECT_EQ(RunList(options_, list, out_, err_), 0);
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(out_.str(), HasSubstr(absl::StrCat("list-", i)));
  }
  EXPECT_THAT(err_.str(), IsEmpty());
  const auto requests = coordinator_.list_requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].page_token(), "");
  EXPECT_EQ(requests[1].page_token(), "2");
  EXPECT_EQ(requests[2].page_token(), "4");
}

TEST_F(CommandsTest, ListFiltersByStateAndStartsAtAToken) {
  ListOptions list;
  list.states = {pnn::v1::JOB_STATE_RUNNING};
  list.page_token = "1";
  options_.output = OutputFormat::kJson;
  EXPECT_EQ(RunList(options_, list, out_, err_), 0);
  // Running jobs are list-1 and list-3; the token skips the first.
  EXPECT_THAT(out_.str(), AllOf(HasSubstr("list-3"), Not(HasSubstr("list-1"))));
  EXPECT_THAT(out_.str(), HasSubstr("\"next_page_token\": \"\""));
  ASSERT_EQ(coordinator_.list_requests().size(), 1u);
  EXPECT_EQ(coordinator_.list_requests()[0].states_size(), 1);
}

TEST_F(CommandsTest, ListWithABadTokenExits2) {
  ListOptions list;
  list.page_token = "garbage";
  EXPECT_EQ(RunList(options_, list, out_, err_), 2);
  EXPECT_THAT(err_.str(), StartsWith("INVALID_ARGUMENT: page_token"));
}

TEST_F(CommandsTest, CancelReportsTheNewState) {
  EXPECT_EQ(RunCancel(options_, "job-running", out_, err_), 0);
  EXPECT_EQ(out_.str(), "job job-running: CANCELLED\n");
  out_.str("");
  EXPECT_EQ(RunCancel(options_, "job-ok", out_, err_), 0);
  EXPECT_EQ(out_.str(), "job job-ok had already ended: SUCCEEDED\n");
  EXPECT_EQ(RunCancel(options_, "nope", out_, err_), 2);
}

class DownloadTest : public CommandsTest {
 protected:
  void SetUp() override {
    CommandsTest::SetUp();
    dir_ =
        ::testing::TempDir() + "/client_download_" + std::to_string(::getpid());
    ASSERT_EQ(std::system(("rm -rf " + dir_ + " && mkdir -p " + dir_).c_str()),
              0);
  }
  void TearDown() override {
    std::system(("rm -rf " + dir_).c_str());
    CommandsTest::TearDown();
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream content;
    content << in.rdbuf();
    return content.str();
  }
  static bool Exists(const std::string& path) {
    return ::access(path.c_str(), F_OK) == 0;
  }
  std::string dir_;
};

TEST_F(DownloadTest, WritesTheExactBytes) {
  DownloadOptions download;
  download.job_id = "job-ok";
  download.path = dir_ + "/model.safetensors";
  download.format = pnn::v1::MODEL_FORMAT_PNN_WEIGHTS;
  EXPECT_EQ(RunDownload(options_, download, out_, err_), 0) << err_.str();
  EXPECT_EQ(Read(download.path), coordinator_.model());
  EXPECT_FALSE(Exists(download.path + ".tmp"));
  EXPECT_EQ(out_.str(), download.path + " 10000 bytes (9.8 KiB)\n");
  EXPECT_EQ(coordinator_.last_download().format(),
            pnn::v1::MODEL_FORMAT_PNN_WEIGHTS);
}

TEST_F(DownloadTest, DefaultNameIsTheSuggestedOnesLastComponent) {
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir_.c_str()), 0);
  DownloadOptions download;
  download.job_id = "job-ok";
  const int code = RunDownload(options_, download, out_, err_);
  ASSERT_EQ(::chdir(cwd), 0);
  EXPECT_EQ(code, 0) << err_.str();
  EXPECT_EQ(Read(dir_ + "/job-ok.safetensors"), coordinator_.model());
  EXPECT_THAT(out_.str(), StartsWith("job-ok.safetensors 10000 bytes"));
}

TEST_F(DownloadTest, InconsistentChunksLeaveNoFile) {
  coordinator_.set_bad_offsets(true);
  DownloadOptions download;
  download.job_id = "job-ok";
  download.path = dir_ + "/model.safetensors";
  EXPECT_EQ(RunDownload(options_, download, out_, err_), 2);
  EXPECT_THAT(err_.str(), HasSubstr("offset 4097 after 4096 bytes"));
  EXPECT_FALSE(Exists(download.path));
  EXPECT_FALSE(Exists(download.path + ".tmp"));
}

TEST_F(DownloadTest, JobWithoutModelExits2AndLeavesNoFile) {
  DownloadOptions download;
  download.job_id = "job-failed";
  download.path = dir_ + "/model.safetensors";
  EXPECT_EQ(RunDownload(options_, download, out_, err_), 2);
  EXPECT_THAT(err_.str(), StartsWith("FAILED_PRECONDITION: job job-failed has "
                                     "no model"));
  EXPECT_FALSE(Exists(download.path));
  EXPECT_FALSE(Exists(download.path + ".tmp"));
}

TEST_F(DownloadTest, UnwritableDestinationIsALocalError) {
  DownloadOptions download;
  download.job_id = "job-ok";
  download.path = dir_ + "/no/such/dir/model.safetensors";
  EXPECT_EQ(RunDownload(options_, download, out_, err_), 1);
  EXPECT_THAT(err_.str(), HasSubstr("cannot write"));
}

TEST_F(CommandsTest, HealthOfTheServerAsAWhole) {
  EXPECT_EQ(RunHealth(options_, "", out_, err_), 0) << err_.str();
  EXPECT_EQ(out_.str(), target_ + ": SERVING\n");
}

TEST_F(CommandsTest, HealthOfAnUnknownServiceExits2) {
  EXPECT_EQ(RunHealth(options_, "no.such.Service", out_, err_), 2);
  EXPECT_THAT(err_.str(), StartsWith("NOT_FOUND"));
}

TEST(UnreachableTest, EveryCommandSaysHowToReachTheCoordinator) {
  ClientOptions options;
  options.coordinator = "127.0.0.1:1";  // nothing listens on port 1
  options.timeout = absl::Seconds(10);
  std::ostringstream out;
  std::ostringstream err;
  const std::string hint =
      "cannot reach coordinator at 127.0.0.1:1 (UNAVAILABLE: ";
  EXPECT_EQ(RunGet(options, "x", out, err), 2);
  EXPECT_THAT(err.str(), AllOf(StartsWith(hint),
                               HasSubstr("is pnn-coordinator running? set "
                                         "--coordinator or PNN_COORDINATOR")));
  err.str("");
  EXPECT_EQ(RunSubmit(options, pnn::v1::SubmitJobRequest(), false, out, err),
            2);
  EXPECT_THAT(err.str(), StartsWith(hint));
  err.str("");
  EXPECT_EQ(RunWatch(options, "x", out, err), 2);
  EXPECT_THAT(err.str(), StartsWith(hint));
  err.str("");
  EXPECT_EQ(RunList(options, ListOptions(), out, err), 2);
  EXPECT_THAT(err.str(), StartsWith(hint));
  err.str("");
  EXPECT_EQ(RunHealth(options, "", out, err), 2);
  EXPECT_THAT(err.str(), StartsWith(hint));
  EXPECT_THAT(out.str(), IsEmpty());
}

// The binary: flag parsing, dispatch and exit statuses as a shell sees them.
struct CliRun {
  int code = -1;
  std::string out;
  std::string err;
};

// `env` sets the environment of pnnctl: by default no PNN_COORDINATOR, so a
// variable set around the test run cannot redirect it.
CliRun RunPnnctl(const std::string& args,
                 const std::string& env = "env -u PNN_COORDINATOR") {
  const std::string base =
      ::testing::TempDir() + "/pnnctl_" + std::to_string(::getpid());
  const std::string command = absl::StrCat(env, " ", PNNCTL_BINARY, " ", args,
                                           " >", base, ".out 2>", base, ".err");
  CliRun run;
  const int status = std::system(command.c_str());
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::ostringstream content;
    content << in.rdbuf();
    return content.str();
  };
  run.out = read(base + ".out");
  run.err = read(base + ".err");
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
  return run;
}

TEST_F(CommandsTest, BinarySubmitsWithFlagsAndPrintsTheId) {
  const CliRun run = RunPnnctl(absl::StrCat(
      "submit --coordinator=", target_,
      " --epochs 3 --train_limit=0 --hidden_widths=64,32 --cut_after 1 "
      "--baseline --kappa=2 --seed=5 --dataset=mnist --device=cpu "
      "--recovery_epochs=1"));
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(run.out, "job-ok\n");
  const pnn::v1::SubmitJobRequest sent = coordinator_.last_submit();
  EXPECT_EQ(sent.spec().training().epochs(), 3);
  EXPECT_EQ(sent.spec().dataset().train_limit(), 0);
  EXPECT_EQ(sent.spec().model().hidden_widths_size(), 2);
  EXPECT_EQ(sent.spec().model().cut_after_layers(0), 1);
  EXPECT_TRUE(sent.conventional_baseline());
  EXPECT_FLOAT_EQ(sent.spec().sil().kappa(), 2.0f);
  EXPECT_EQ(sent.spec().seed(), 5u);
  EXPECT_EQ(sent.spec().dataset().path(), "mnist");
  EXPECT_EQ(sent.spec().recovery().epochs(), 1);
}

TEST_F(CommandsTest, BinaryFileFlagsOverrideAndUnsetFlagsDoNot) {
  const std::string path = ::testing::TempDir() + "/client_job.json";
  std::ofstream(path) << R"({"spec": {"name": "job-failed",
      "sil": {"kappa": 3}, "seed": "8", "dataset": {"train_limit": 100}},
      "conventional_baseline": true})";
  const CliRun run =
      RunPnnctl(absl::StrCat("submit ", path, " --coordinator=", target_,
                             " --nobaseline --train_limit=0 --watch"));
  std::remove(path.c_str());
  EXPECT_EQ(run.code, 3) << run.err;  // job-failed ends FAILED
  EXPECT_THAT(run.out, StartsWith("job-failed\n"));
  const pnn::v1::SubmitJobRequest sent = coordinator_.last_submit();
  EXPECT_FALSE(sent.conventional_baseline());
  EXPECT_EQ(sent.spec().dataset().train_limit(), 0);
  // Not given on the command line: the file's values stay, not the flags'
  // defaults.
  EXPECT_FLOAT_EQ(sent.spec().sil().kappa(), 3.0f);
  EXPECT_EQ(sent.spec().seed(), 8u);
}

TEST_F(CommandsTest, BinaryGetJsonAndWatchExitStatuses) {
  CliRun run =
      RunPnnctl(absl::StrCat("get job-cancelled --output json "
                             "--coordinator ",
                             target_));
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("\"state\": \"JOB_STATE_CANCELLED\""));
  run = RunPnnctl(absl::StrCat("watch job-cancelled --coordinator=", target_));
  EXPECT_EQ(run.code, 4);
  run = RunPnnctl(absl::StrCat("watch job-ok --coordinator=", target_));
  EXPECT_EQ(run.code, 0);
  // stdout is a file here: one line per event, no escape sequences.
  EXPECT_THAT(run.out, Not(HasSubstr("\x1b[")));
  run = RunPnnctl(absl::StrCat("get nope --coordinator=", target_));
  EXPECT_EQ(run.code, 2);
  EXPECT_THAT(run.err, StartsWith("NOT_FOUND"));
}

TEST_F(CommandsTest, BinaryTakesTheCoordinatorFromTheEnvironment) {
  const CliRun run =
      RunPnnctl("health", absl::StrCat("env PNN_COORDINATOR=", target_));
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr(target_ + ": SERVING"));
}

TEST(BinaryTest, UsageAndUsageErrors) {
  CliRun run = RunPnnctl("help");
  EXPECT_EQ(run.code, 0);
  EXPECT_THAT(run.out, AllOf(HasSubstr("Usage: pnnctl COMMAND"),
                             HasSubstr("Exit status:"),
                             HasSubstr("4  the watched job ended CANCELLED")));
  run = RunPnnctl("");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("Usage: pnnctl COMMAND"));
  run = RunPnnctl("frobnicate");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("unknown command 'frobnicate'"));
  run = RunPnnctl("lsit");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("did you mean 'list'?"));
  run = RunPnnctl("get");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("usage: pnnctl get ID"));
  run = RunPnnctl("get x y");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("usage: pnnctl get ID"));
  run = RunPnnctl("get x --epochs 3");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--epochs applies to `pnnctl submit`, not "
                                 "to `pnnctl get`"));
  run = RunPnnctl("list --state=done");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("unknown job state 'done'"));
  run = RunPnnctl("get x --output yaml");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--output yaml: expected table or json"));
  run = RunPnnctl("submit --no_such_flag");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("unknown flag --no-such-flag"));
  run = RunPnnctl("submit /no/such/job.json");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("cannot read job file /no/such/job.json"));
  run = RunPnnctl("download x --format=onnx");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("expected safetensors or pnn"));
  run = RunPnnctl("list --timeout 30");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--timeout 30: expected a duration"));
}

TEST(BinaryTest, HelpExits0WithTheCommandsAndTheirFlags) {
  for (const char* args : {"--help", "-h", "help"}) {
    const CliRun run = RunPnnctl(args);
    EXPECT_EQ(run.code, 0) << args;
    EXPECT_THAT(run.out, AllOf(HasSubstr("Usage: pnnctl COMMAND"),
                               HasSubstr("submit [JOB.json]"),
                               HasSubstr("--coordinator HOST:PORT")))
        << args;
  }
  for (const char* args : {"submit --help", "help submit", "submit -h"}) {
    const CliRun run = RunPnnctl(args);
    EXPECT_EQ(run.code, 0) << args;
    EXPECT_THAT(run.out,
                AllOf(HasSubstr("pnnctl submit"), HasSubstr("--train-limit"),
                      HasSubstr("epochs per segment"), HasSubstr("--watch")))
        << args;
  }
  const CliRun run = RunPnnctl("download --help");
  EXPECT_EQ(run.code, 0);
  EXPECT_THAT(run.out, AllOf(HasSubstr("-o,--output"), HasSubstr("--format"),
                             HasSubstr("output file")));
}

TEST(BinaryTest, MisspeltFlagSuggestsTheRightOne) {
  CliRun run = RunPnnctl("submit --epoch 3");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err,
              AllOf(HasSubstr("unknown flag --epoch for `pnnctl submit`; "
                              "did you mean --epochs?"),
                    HasSubstr("usage: pnnctl submit")));
  run = RunPnnctl("list --page-sise=3");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("did you mean --page-size?"));
  run = RunPnnctl("--coordinater=x list");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("did you mean --coordinator?"));
}

TEST(BinaryTest, ZeroOrNegativeCountsAreErrorsNamingTheFlag) {
  CliRun run = RunPnnctl("submit --epochs 0");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--epochs 0: must be at least 1"));
  run = RunPnnctl("submit --epochs=-2");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--epochs -2: must be at least 1"));
  run = RunPnnctl("submit --train-limit=-1");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--train-limit -1: must be 0 (all) or more"));
  run = RunPnnctl("submit --kappa 0");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--kappa 0: must be greater than 0"));
  run = RunPnnctl("list --page-size 0");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("--page-size 0: must be at least 1"));
  run = RunPnnctl("submit --epochs three");
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr("three"));
}

TEST_F(CommandsTest, BinaryTakesKebabAndSnakeCaseFlags) {
  CliRun run = RunPnnctl(absl::StrCat(
      "submit --coordinator ", target_,
      " --train-limit 7 --test_limit=8 --hidden-widths 16 --cut_after 1 "
      "--evaluations-per-epoch 2 --recovery_epochs 1 --no-baseline "
      "--parallelism model_parallel --micro-batches 6 --schedule 1f1b"));
  EXPECT_EQ(run.code, 0) << run.err;
  pnn::v1::SubmitJobRequest sent = coordinator_.last_submit();
  EXPECT_EQ(sent.spec().dataset().train_limit(), 7);
  EXPECT_EQ(sent.spec().dataset().test_limit(), 8);
  EXPECT_EQ(sent.spec().model().hidden_widths(0), 16);
  EXPECT_EQ(sent.spec().evaluations_per_epoch(), 2);
  EXPECT_EQ(sent.spec().recovery().epochs(), 1);
  EXPECT_FALSE(sent.conventional_baseline());
  EXPECT_EQ(sent.spec().pipeline().micro_batches(), 6);
  EXPECT_EQ(sent.spec().pipeline().schedule(),
            pnn::v1::PIPELINE_SCHEDULE_1F1B);
  // Global flags before the command, snake_case too.
  run = RunPnnctl(absl::StrCat("--coordinator=", target_,
                               " --timeout=5s submit --train_limit 9"));
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(coordinator_.last_submit().spec().dataset().train_limit(), 9);
}

TEST_F(CommandsTest, BinaryOutputFlagOfEachCommand) {
  // -o json after get, as kubectl has it; --output before the command too.
  for (const std::string& args :
       {absl::StrCat("get job-ok -o json --coordinator ", target_),
        absl::StrCat("get job-ok --output=json --coordinator ", target_),
        absl::StrCat("--output json --coordinator ", target_, " get job-ok")}) {
    const CliRun run = RunPnnctl(args);
    EXPECT_EQ(run.code, 0) << args << run.err;
    EXPECT_THAT(run.out, HasSubstr("\"state\": \"JOB_STATE_SUCCEEDED\""))
        << args;
  }
  CliRun run =
      RunPnnctl(absl::StrCat("list -o json --coordinator ", target_));
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("\"jobs\": ["));
  // download's -o is the output file.
  const std::string path = ::testing::TempDir() + "/client_cli_model.bin";
  run = RunPnnctl(
      absl::StrCat("download job-ok -o ", path, " --coordinator ", target_));
  EXPECT_EQ(run.code, 0) << run.err;
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  EXPECT_EQ(bytes.str(), coordinator_.model());
  std::remove(path.c_str());
}

TEST(BinaryTest, UnreachableCoordinatorExits2) {
  const CliRun run = RunPnnctl("list --coordinator=127.0.0.1:1");
  EXPECT_EQ(run.code, 2);
  EXPECT_THAT(run.err, StartsWith("cannot reach coordinator at 127.0.0.1:1"));
}

}  // namespace
}  // namespace pnn::client
