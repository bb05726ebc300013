// pnnctl's rendering of hand-built coordinator messages: progress bars, the
// live display, the result table, job lists, JSON, and exit-code mapping.
#include <google/protobuf/util/time_util.h>

#include <sstream>
#include <string>

#include "client/cluster_commands.h"
#include "client/exit_codes.h"
#include "client/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn::client {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr int64_t kStart = 1700000000;  // 2023-11-14 22:13:20 UTC

google::protobuf::Timestamp At(double seconds_after_start) {
  return TimeUtil::NanosecondsToTimestamp(
      static_cast<int64_t>((kStart + seconds_after_start) * 1e9));
}

FormatOptions Utc() {
  FormatOptions options;
  options.time_zone = absl::UTCTimeZone();
  return options;
}

pnn::v1::TaskStatus Task(int index, int first, int last) {
  pnn::v1::TaskStatus task;
  task.set_segment_index(index);
  task.set_first_layer(first);
  task.set_last_layer(last);
  task.set_epochs_total(5);
  return task;
}

// A finished two-segment job with a baseline, as the coordinator would
// report it.
pnn::v1::Job SucceededJob() {
  pnn::v1::Job job;
  job.set_job_id("job-42");
  job.mutable_spec()->set_name("fashion-mnist-paper");
  for (int i = 0; i < 5; ++i)
    job.mutable_spec()->mutable_model()->add_hidden_widths(256);
  job.mutable_spec()->mutable_model()->add_cut_after_layers(3);
  job.mutable_spec()->mutable_training()->set_epochs(5);
  job.mutable_spec()->mutable_training()->set_batch_size(128);
  job.mutable_spec()->mutable_training()->set_learning_rate(0.001f);
  job.mutable_spec()->mutable_dataset()->set_path("fashion-mnist");
  job.mutable_spec()->set_seed(1);
  job.mutable_spec()->set_device("cpu");
  job.set_input_width(784);
  job.set_num_classes(10);
  job.set_state(pnn::v1::JOB_STATE_SUCCEEDED);
  *job.mutable_create_time() = At(-2);
  *job.mutable_start_time() = At(0);
  *job.mutable_end_time() = At(40);
  job.set_conventional_baseline(true);

  pnn::v1::TaskStatus* first = job.add_segments();
  *first = Task(0, 1, 3);
  first->set_state(pnn::v1::TASK_STATE_SUCCEEDED);
  first->set_worker_id("w-1");
  first->set_worker_address("10.0.0.2:7000");
  *first->mutable_start_time() = At(0.5);
  *first->mutable_end_time() = At(19.6);
  first->set_progress(1);
  first->set_bytes_sent(1200);
  first->set_bytes_received(3 << 20);
  first->mutable_cost()->set_wall_seconds(19.1);
  first->mutable_cost()->set_samples_per_second(15702.4);
  first->mutable_cost()->set_peak_rss_growth_bytes(5 << 20);
  first->mutable_cost()->set_parameter_bytes(1 << 20);
  first->mutable_cost()->set_gradient_bytes(1 << 20);
  first->mutable_cost()->set_optimizer_state_bytes(2 << 20);
  first->mutable_cost()->set_activation_bytes(1 << 20);

  pnn::v1::TaskStatus* second = job.add_segments();
  *second = Task(1, 4, 6);
  second->set_state(pnn::v1::TASK_STATE_SUCCEEDED);
  second->set_worker_id("w-2");
  *second->mutable_start_time() = At(0.6);
  *second->mutable_end_time() = At(10.9);
  second->set_bytes_sent(900);
  second->set_bytes_received(600 << 10);
  // No cost: wall time from the timestamps, rate from the last epoch.
  second->add_epochs()->set_samples_per_second(29000);

  pnn::v1::TaskStatus* baseline = job.mutable_baseline();
  *baseline = Task(-1, 1, 6);
  baseline->set_state(pnn::v1::TASK_STATE_SUCCEEDED);
  baseline->set_worker_id("w-3");
  *baseline->mutable_start_time() = At(0.7);
  *baseline->mutable_end_time() = At(35.8);
  baseline->mutable_cost()->set_wall_seconds(35.1);

  job.mutable_test()->set_accuracy(0.8794);
  job.mutable_test()->set_loss(0.34126);
  job.mutable_test()->set_samples(10000);
  job.set_joined_test_accuracy(0.8791);
  job.mutable_baseline_test()->set_accuracy(0.8754);
  job.mutable_baseline_test()->set_samples(10000);
  job.set_bytes_sent(2100);
  job.set_bytes_received((3 << 20) + (600 << 10));
  job.set_model_bytes(1843200);
  return job;
}

pnn::v1::JobEvent RunningEvent() {
  pnn::v1::JobEvent event;
  *event.mutable_time() = At(5);
  event.set_message("segment 1 finished epoch 2");
  pnn::v1::Job& job = *event.mutable_job();
  job.set_job_id("job-42");
  job.set_state(pnn::v1::JOB_STATE_RUNNING);
  pnn::v1::TaskStatus* first = job.add_segments();
  *first = Task(0, 1, 3);
  first->set_state(pnn::v1::TASK_STATE_RUNNING);
  first->set_worker_id("w-1");
  first->set_progress(0.5);
  first->set_current_loss(0.123456);
  first->add_epochs()->set_train_loss(0.5);
  first->add_epochs()->set_train_loss(0.2);
  pnn::v1::TaskStatus* second = job.add_segments();
  *second = Task(1, 4, 6);
  second->set_state(pnn::v1::TASK_STATE_QUEUED);
  return event;
}

TEST(ProgressBarTest, FillsInProportionAndClamps) {
  EXPECT_EQ(ProgressBar(0, 10), "[..........]");
  EXPECT_EQ(ProgressBar(0.5, 10), "[#####.....]");
  EXPECT_EQ(ProgressBar(0.99, 10), "[#########.]");
  EXPECT_EQ(ProgressBar(1, 10), "[##########]");
  EXPECT_EQ(ProgressBar(0.3, 10), "[###.......]");  // no rounding down to 2
  EXPECT_EQ(ProgressBar(1.7, 4), "[####]");
  EXPECT_EQ(ProgressBar(-1, 4), "[....]");
  EXPECT_EQ(ProgressBar(std::nan(""), 4), "[....]");
}

TEST(FormatTest, BytesPercentAndNames) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(5 << 20), "5.0 MiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3.00 GiB");
  EXPECT_EQ(FormatPercent(0.8794), "87.94%");
  EXPECT_EQ(JobStateName(pnn::v1::JOB_STATE_ASSEMBLING), "ASSEMBLING");
  EXPECT_EQ(TaskStateName(pnn::v1::TASK_STATE_WAITING), "WAITING");
  EXPECT_EQ(JobStateName(static_cast<pnn::v1::JobState>(42)), "UNKNOWN(42)");
}

TEST(FormatTest, TaskLabelsAreOneBasedAndTheBaselineIsNamed) {
  EXPECT_EQ(TaskLabel(Task(0, 1, 3)), "segment 1");
  EXPECT_EQ(TaskLabel(Task(2, 5, 6)), "segment 3");
  EXPECT_EQ(TaskLabel(Task(-1, 1, 6)), "baseline");
}

TEST(FormatTest, TaskProgressLine) {
  const pnn::v1::JobEvent event = RunningEvent();
  EXPECT_EQ(FormatTaskProgress(event.job().segments(0)),
            "segment 1  L1-3   [############............]  50%  epoch 3/5  "
            "loss 0.1235  RUNNING on w-1");
  EXPECT_EQ(FormatTaskProgress(event.job().segments(1)),
            "segment 2  L4-6   [........................]   0%  epoch 0/5  "
            "QUEUED");
}

TEST(FormatTest, SucceededTaskShowsFullEvenWithoutAFinalProgress) {
  pnn::v1::TaskStatus task = Task(0, 1, 3);
  task.set_state(pnn::v1::TASK_STATE_SUCCEEDED);
  task.set_progress(0.97);
  for (int e = 0; e < 5; ++e) task.add_epochs()->set_train_loss(0.1);
  task.set_worker_id("w-1");
  task.set_worker_address("h:1");
  task.set_attempts(2);
  EXPECT_THAT(FormatTaskProgress(task),
              AllOf(HasSubstr("[########################] 100%"),
                    HasSubstr("epoch 5/5"), HasSubstr("loss 0.1000"),
                    HasSubstr("SUCCEEDED on w-1 (h:1), attempt 2")));
}

TEST(FormatTest, ProgressBlockHasHeaderTasksBaselineAndEvent) {
  pnn::v1::JobEvent event = RunningEvent();
  event.mutable_job()->mutable_spec()->set_name("demo");
  event.mutable_job()->set_message("waiting for an idle worker");
  *event.mutable_job()->mutable_baseline() = Task(-1, 1, 6);
  event.mutable_job()->set_conventional_baseline(true);
  const std::vector<std::string> lines = FormatProgressBlock(event);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0],
            "job job-42 (demo): RUNNING - waiting for an idle worker");
  EXPECT_THAT(lines[1], StartsWith("  segment 1 "));
  EXPECT_THAT(lines[2], StartsWith("  segment 2 "));
  EXPECT_THAT(lines[3], StartsWith("  baseline   L1-6 "));
  EXPECT_EQ(lines[4], "  last event: segment 1 finished epoch 2");
}

TEST(FormatTest, EventLineForLogs) {
  pnn::v1::JobEvent event = RunningEvent();
  EXPECT_EQ(FormatEventLine(event, Utc()),
            "22:13:25 RUNNING segment 1 50%, segment 2 0%: segment 1 "
            "finished epoch 2");
  event.clear_time();
  event.clear_message();
  event.mutable_job()->set_message("assembling");
  EXPECT_EQ(FormatEventLine(event, Utc()),
            "RUNNING segment 1 50%, segment 2 0%: assembling");
}

TEST(ProgressDisplayTest, AppendsOneLinePerEventWhenNotATerminal) {
  std::ostringstream out;
  ProgressDisplay display(&out, /*redraw=*/false, Utc());
  display.Update(RunningEvent());
  EXPECT_EQ(out.str(),
            "22:13:25 RUNNING segment 1 50%, segment 2 0%: segment 1 "
            "finished epoch 2\n");
  EXPECT_THAT(out.str(), Not(HasSubstr("\x1b")));
}

// Not a terminal: a line per state change, finished epoch or new message;
// the progress updates between them (hundreds per epoch) print nothing.
TEST(ProgressDisplayTest, NonTerminalSkipsProgressOnlyUpdates) {
  std::ostringstream out;
  ProgressDisplay display(&out, /*redraw=*/false, Utc());
  pnn::v1::JobEvent event = RunningEvent();
  display.Update(event);  // 1: first line
  event.clear_message();
  for (int batch = 1; batch <= 300; ++batch) {  // progress only
    event.mutable_job()->mutable_segments(0)->set_progress(0.5 + batch / 1e3);
    event.mutable_job()->mutable_segments(0)->set_current_loss(0.1 / batch);
    display.Update(event);
  }
  // 2: segment 1 finishes epoch 3 (no message).
  event.mutable_job()->mutable_segments(0)->add_epochs()->set_train_loss(0.1);
  display.Update(event);
  display.Update(event);  // same again: nothing
  // 3: segment 2 starts.
  event.mutable_job()->mutable_segments(1)->set_state(
      pnn::v1::TASK_STATE_RUNNING);
  display.Update(event);
  // 4: a message, once.
  event.set_message("segment 2 started on w-2");
  display.Update(event);
  display.Update(event);
  // 5: the job ends.
  event.clear_message();
  event.mutable_job()->set_state(pnn::v1::JOB_STATE_SUCCEEDED);
  display.Update(event);
  const std::string text = out.str();
  SCOPED_TRACE(text);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 5);
  EXPECT_THAT(text, HasSubstr(": segment 2 started on w-2\n"));
  EXPECT_THAT(text, HasSubstr("SUCCEEDED segment 1 80%"));
}

TEST(ProgressDisplayTest, RedrawsTheBlockInPlaceOnATerminal) {
  std::ostringstream out;
  FormatOptions options = Utc();
  options.width = 40;
  ProgressDisplay display(&out, /*redraw=*/true, options);
  display.Update(RunningEvent());
  const std::string first = out.str();
  // Nothing to move over the first time; erase below, then 4 lines.
  EXPECT_THAT(first, StartsWith("\x1b[J"));
  EXPECT_EQ(std::count(first.begin(), first.end(), '\n'), 4);
  // Lines are cut to the terminal width so they do not wrap.
  std::istringstream lines(first.substr(3));
  for (std::string line; std::getline(lines, line);) {
    EXPECT_LT(line.size(), 40u) << line;
  }
  out.str("");
  pnn::v1::JobEvent shorter = RunningEvent();
  shorter.clear_message();
  display.Update(shorter);
  // Back up over the 4 lines drawn, erase them, draw 3.
  const std::string second = out.str();
  EXPECT_THAT(second, StartsWith("\x1b[4F\x1b[J"));
  EXPECT_EQ(std::count(second.begin(), second.end(), '\n'), 3);
  out.str("");
  display.Update(shorter);
  EXPECT_THAT(out.str(), StartsWith("\x1b[3F\x1b[J"));
}

TEST(ResultTableTest, AccuracyBaselineAndOneRowPerTask) {
  const std::string table = FormatResultTable(SucceededJob());
  SCOPED_TRACE(table);
  EXPECT_THAT(table, StartsWith("job job-42 (fashion-mnist-paper) SUCCEEDED "
                                "in 40.0 s\n"));
  EXPECT_THAT(table, ContainsRegex("test accuracy \\(final\\) +87\\.94%  "
                                   "10000 samples, loss 0\\.3413"));
  EXPECT_THAT(table, ContainsRegex("joined, before recovery +87\\.91%"));
  EXPECT_THAT(table, ContainsRegex("baseline \\(conventional\\) +87\\.54%"));
  EXPECT_THAT(table, Not(HasSubstr("\n  recovery ")));
  EXPECT_THAT(table, ContainsRegex("task +layers +state +worker +start +end "
                                   "+wall +samples/s\n"));
  EXPECT_THAT(table, ContainsRegex("task +sent +received +train mem +analytic "
                                   "+device peak\n"));
  EXPECT_THAT(
      table, ContainsRegex("segment 1 +1-3 +SUCCEEDED +w-1 \\(10.0.0.2:7000\\) "
                           "+\\+0\\.5 s +\\+19\\.6 s +19\\.1 s +15702\n"));
  EXPECT_THAT(table, ContainsRegex("segment 1 +1\\.2 KiB +3\\.0 MiB +5\\.0 MiB "
                                   "+5\\.0 MiB +-\n"));
  EXPECT_THAT(table, ContainsRegex("segment 2 +4-6 +SUCCEEDED +w-2 +\\+0\\.6 s "
                                   "+\\+10\\.9 s +10\\.3 s +29000\n"));
  EXPECT_THAT(table, ContainsRegex("segment 2 +900 B +600\\.0 KiB +- +- +-\n"));
  EXPECT_THAT(table, ContainsRegex("baseline +1-6 +SUCCEEDED +w-3 +\\+0\\.7 s "
                                   "+\\+35\\.8 s +35\\.1 s +-\n"));
  EXPECT_THAT(table, ContainsRegex("baseline +0 B +0 B +- +- +-\n"));
  EXPECT_THAT(table, HasSubstr("bytes on the wire (job total): 2.1 KiB sent, "
                               "3.6 MiB received"));
  EXPECT_THAT(table, HasSubstr("model: 1.8 MiB; pnnctl download job-42"));
  EXPECT_THAT(table, Not(HasSubstr("errors:")));
}

// A 100-column terminal shows the table unwrapped, even with three
// segments, a baseline, long worker names, hours of training, GiB of
// traffic and long messages.
TEST(ResultTableTest, EveryLineFitsIn100Columns) {
  pnn::v1::Job job = SucceededJob();
  job.mutable_spec()->mutable_model()->add_cut_after_layers(5);
  *job.mutable_end_time() = At(98765.4);
  job.set_message(
      "succeeded after a long run in which several workers were lost and "
      "replaced, and the assembler joined every segment's last checkpoint");
  pnn::v1::TaskStatus* third = job.add_segments();
  *third = Task(2, 7, 10);
  third->set_state(pnn::v1::TASK_STATE_FAILED);
  third->set_attempts(12);
  third->set_error(std::string(150, 'x') + " and then some more words");
  for (pnn::v1::TaskStatus* task :
       {job.mutable_segments(0), job.mutable_segments(1), third,
        job.mutable_baseline()}) {
    task->set_worker_id("worker-0123456789abcdef-gpu-node-17");
    task->set_worker_address("gpu-node-17.cluster.example.com:50052");
    *task->mutable_start_time() = At(12345.6);
    *task->mutable_end_time() = At(98765.4);
    task->mutable_cost()->set_wall_seconds(86419.8);
    task->mutable_cost()->set_samples_per_second(1234567.8);
    task->set_bytes_sent(int64_t{123} << 30);
    task->set_bytes_received(int64_t{456} << 30);
    task->mutable_cost()->set_peak_rss_growth_bytes(int64_t{12} << 30);
    task->mutable_cost()->set_parameter_bytes(int64_t{34} << 30);
    task->mutable_cost()->set_device_peak_allocated_bytes(int64_t{78} << 30);
  }
  job.set_bytes_sent(int64_t{1234} << 30);
  job.set_bytes_received(int64_t{5678} << 30);
  job.set_peer_bytes(int64_t{910} << 30);
  job.set_checkpoint_bytes(int64_t{111} << 30);
  job.set_training_seconds(98765.4);
  const std::string table = FormatResultTable(job);
  SCOPED_TRACE(table);
  std::istringstream lines(table);
  int count = 0;
  for (std::string line; std::getline(lines, line); ++count) {
    EXPECT_LE(line.size(), 100u) << line;
  }
  EXPECT_GT(count, 20);
  EXPECT_THAT(table, HasSubstr("segment 3"));
  EXPECT_THAT(table, HasSubstr("worker-0123456789..."));
}

// A CUDA task's allocator peak: from its cost once done, from its epochs
// while it trains; "-" for CPU tasks.
TEST(ResultTableTest, DevicePeakComesFromTheCostOrTheEpochs) {
  pnn::v1::Job job = SucceededJob();
  job.mutable_segments(0)->mutable_cost()->set_device_peak_allocated_bytes(
      int64_t{3} << 30);
  job.mutable_segments(1)->add_epochs()->set_device_peak_allocated_bytes(
      int64_t{5} << 20);
  const std::string table = FormatResultTable(job);
  SCOPED_TRACE(table);
  EXPECT_THAT(table, ContainsRegex("segment 1 +1\\.2 KiB +3\\.0 MiB +5\\.0 MiB "
                                   "+5\\.0 MiB +3\\.00 GiB\n"));
  EXPECT_THAT(table, ContainsRegex("segment 2 +900 B +600\\.0 KiB +- +- "
                                   "+5\\.0 MiB\n"));
  EXPECT_THAT(table, HasSubstr("torch.cuda.max_memory_allocated"));
}

TEST(ResultTableTest, CutsChosenByMeasuredTimeSayWhereAndHowLong) {
  pnn::v1::Job job = SucceededJob();
  pnn::v1::CutPlan* plan = job.mutable_cut_plan();
  plan->mutable_request()->set_segments(2);
  plan->mutable_request()->set_objective(
      pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME);
  plan->add_cut_after_layers(3);
  plan->set_profiled_on("worker w-1 (cuda:0, 4 threads)");
  for (int first : {1, 4}) {
    auto* segment = plan->add_segments();
    segment->set_first_layer(first);
    segment->set_last_layer(first + 2);
    segment->set_training_flops_per_sample(2000000);
    segment->set_training_memory_bytes(1 << 20);
    segment->set_measured_seconds_per_batch(first == 1 ? 0.00125 : 0.0025);
  }
  const std::string table = FormatResultTable(job);
  SCOPED_TRACE(table);
  EXPECT_THAT(table, HasSubstr("cuts chosen by pnn: after layer(s) 3 (2 "
                               "segments balancing measured time)\n"
                               "  layers timed on worker w-1 (cuda:0, 4 "
                               "threads)\n"));
  EXPECT_THAT(table, HasSubstr("segment 1 (layers 1..3): 2.00 MFLOPs/sample "
                               "to train, 1.0 MiB predicted memory, 1.25 "
                               "ms/batch measured\n"));
  EXPECT_THAT(table, HasSubstr("2.50 ms/batch measured"));
}

TEST(ResultTableTest, FailedJobShowsReasonAndTaskErrors) {
  pnn::v1::Job job = SucceededJob();
  job.set_state(pnn::v1::JOB_STATE_FAILED);
  job.set_message("segment 2 failed on every worker");
  job.clear_test();
  job.clear_baseline_test();
  job.set_conventional_baseline(false);
  job.clear_baseline();
  job.set_model_bytes(0);
  job.mutable_segments(1)->set_state(pnn::v1::TASK_STATE_FAILED);
  job.mutable_segments(1)->set_attempts(3);
  job.mutable_segments(1)->set_error("dataset emnist not found on worker");
  const std::string table = FormatResultTable(job);
  SCOPED_TRACE(table);
  EXPECT_THAT(table,
              StartsWith("job job-42 (fashion-mnist-paper) FAILED in "
                         "40.0 s\n  segment 2 failed on every worker\n"));
  EXPECT_THAT(table,
              ContainsRegex("test accuracy \\(final\\) +-  no test pass"));
  EXPECT_THAT(table, Not(HasSubstr("baseline")));
  EXPECT_THAT(table, HasSubstr("errors:\n  segment 2: dataset emnist not "
                               "found on worker (after 3 attempts)\n"));
  EXPECT_THAT(table, Not(HasSubstr("pnnctl download")));
}

TEST(ResultTableTest, ErrorOfARetriedTaskThatSucceededIsNotAFailure) {
  pnn::v1::Job job = SucceededJob();
  job.mutable_segments(0)->set_attempts(2);
  job.mutable_segments(0)->set_error("worker w-9 lost");
  EXPECT_THAT(FormatResultTable(job),
              HasSubstr("errors:\n  segment 1: succeeded after 2 attempts; "
                        "earlier error: worker w-9 lost\n"));
}

TEST(ResultTableTest, RecoveryEpochsAreShown) {
  pnn::v1::Job job = SucceededJob();
  job.mutable_spec()->mutable_recovery()->set_epochs(2);
  job.set_recovery_seconds(4.25);
  EXPECT_THAT(FormatResultTable(job),
              ContainsRegex("recovery +2 epoch\\(s\\)  4\\.2 s"));
}

TEST(JobDetailsTest, RunningJobShowsProgressEndedJobShowsResults) {
  const std::string running = FormatJobDetails(RunningEvent().job(), Utc());
  EXPECT_THAT(running, ContainsRegex("state +RUNNING"));
  EXPECT_THAT(running, HasSubstr("segment 1  L1-3"));
  EXPECT_THAT(running, Not(HasSubstr("test accuracy")));

  const std::string done = FormatJobDetails(SucceededJob(), Utc());
  SCOPED_TRACE(done);
  EXPECT_THAT(done, ContainsRegex("name +fashion-mnist-paper"));
  EXPECT_THAT(done, ContainsRegex("created +2023-11-14 22:13:18 UTC"));
  EXPECT_THAT(done,
              ContainsRegex("network +784-256-256-256-256-256-10, cut after "
                            "layer\\(s\\) 3 -> 2 segments"));
  EXPECT_THAT(done, ContainsRegex("training +5 epochs per segment, batch 128, "
                                  "learning rate 0.001"));
  EXPECT_THAT(done, ContainsRegex("data +fashion-mnist"));
  EXPECT_THAT(done, ContainsRegex("run +seed 1, device cpu, with conventional "
                                  "baseline"));
  EXPECT_THAT(done, ContainsRegex("test accuracy \\(final\\) +87\\.94%"));
}

TEST(JobListTest, OneRowPerJob) {
  pnn::v1::Job running = RunningEvent().job();
  running.set_job_id("job-43");
  *running.mutable_create_time() = At(100);
  const std::string table = FormatJobList({running, SucceededJob()}, Utc());
  SCOPED_TRACE(table);
  std::vector<std::string> lines;
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[0], ContainsRegex("^JOB ID +NAME +STATE +SEGMENTS +"
                                      "PROGRESS +ACCURACY +CREATED$"));
  EXPECT_THAT(lines[1], ContainsRegex("^job-43 +- +RUNNING +0/2 +25% +- +"
                                      "2023-11-14 22:15:00$"));
  EXPECT_THAT(lines[2], ContainsRegex("^job-42 +fashion-mnist-paper +SUCCEEDED"
                                      " +2/2 +100% +87\\.94% +2023-11-14 "
                                      "22:13:18$"));
}

TEST(ToJsonTest, ProtoFieldNamesAndEveryPrimitiveField) {
  pnn::v1::Job job;
  job.set_job_id("j");
  job.set_state(pnn::v1::JOB_STATE_SUCCEEDED);
  job.mutable_test()->set_accuracy(0.875);
  const std::string json = ToJson(job, /*multiline=*/false);
  EXPECT_THAT(json, HasSubstr("\"job_id\":\"j\""));
  EXPECT_THAT(json, HasSubstr("\"state\":\"JOB_STATE_SUCCEEDED\""));
  EXPECT_THAT(json, HasSubstr("\"test\":{\"accuracy\":0.875"));
  // Zero-valued fields are printed too.
  EXPECT_THAT(json, HasSubstr("\"model_bytes\":\"0\""));
  EXPECT_THAT(json, HasSubstr("\"conventional_baseline\":false"));
  EXPECT_EQ(std::count(json.begin(), json.end(), '\n'), 1);
  EXPECT_EQ(json.back(), '\n');
}

TEST(ExitCodeTest, FinalStates) {
  EXPECT_EQ(ExitCodeForFinalState(pnn::v1::JOB_STATE_SUCCEEDED), 0);
  EXPECT_EQ(ExitCodeForFinalState(pnn::v1::JOB_STATE_FAILED), 3);
  EXPECT_EQ(ExitCodeForFinalState(pnn::v1::JOB_STATE_CANCELLED), 4);
  EXPECT_EQ(ExitCodeForFinalState(pnn::v1::JOB_STATE_RUNNING), 2);
  EXPECT_TRUE(IsFinalState(pnn::v1::JOB_STATE_CANCELLED));
  EXPECT_FALSE(IsFinalState(pnn::v1::JOB_STATE_ASSEMBLING));
  EXPECT_FALSE(IsFinalState(pnn::v1::JOB_STATE_UNSPECIFIED));
}

TEST(ExitCodeTest, RpcErrorsStartWithTheCodeNameAndSayWhatToDo) {
  EXPECT_EQ(DescribeRpcError(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                          "connection refused"),
                             "localhost:50051", "GetJob"),
            "cannot reach coordinator at localhost:50051 (UNAVAILABLE: "
            "connection refused); is pnn-coordinator running? set "
            "--coordinator or PNN_COORDINATOR");
  EXPECT_THAT(
      DescribeRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "no job 'x'"),
                       "h:1", "GetJob"),
      AllOf(StartsWith("NOT_FOUND: no job 'x'"), HasSubstr("pnnctl list")));
  EXPECT_THAT(
      DescribeRpcError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                    "training.epochs: must be at most 10000"),
                       "h:1", "SubmitJob"),
      AllOf(StartsWith("INVALID_ARGUMENT: training.epochs: must be at most "
                       "10000"),
            HasSubstr("fix the named field in the job spec")));
  // Other calls' INVALID_ARGUMENT is not about a spec.
  EXPECT_EQ(DescribeRpcError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                          "page_size: at most 1000"),
                             "h:1", "ListJobs"),
            "INVALID_ARGUMENT: page_size: at most 1000");
  EXPECT_THAT(DescribeRpcError(
                  grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "late"),
                  "h:1", "ListJobs"),
              AllOf(StartsWith("DEADLINE_EXCEEDED: late"),
                    HasSubstr("ListJobs"), HasSubstr("--timeout")));
  EXPECT_EQ(DescribeRpcError(
                grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "running"),
                "h:1", "DownloadModel"),
            "FAILED_PRECONDITION: running");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::PERMISSION_DENIED),
            "PERMISSION_DENIED");
}

TEST(WorkerListTest, StatesAgesAndTheTableFitIn100Columns) {
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  auto at = [](absl::Time time) {
    return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(time));
  };
  pnn::v1::WorkerStatus idle;
  idle.set_worker_id("worker-3fa2c1-1");
  idle.mutable_info()->set_name("a-rather-long-host-name.example.internal");
  idle.mutable_info()->set_address("10.0.0.17:50052");
  idle.mutable_info()->set_device("cpu");
  idle.mutable_info()->set_threads(2);
  *idle.mutable_last_heartbeat_time() = at(now - absl::Milliseconds(400));
  pnn::v1::WorkerStatus busy = idle;
  busy.set_job_id("job-0123456789ab");
  busy.set_task_index(1);
  *busy.mutable_last_heartbeat_time() = at(now - absl::Seconds(185));
  pnn::v1::WorkerStatus backed_off = idle;
  *backed_off.mutable_backed_off_until() = at(now + absl::Seconds(30));
  pnn::v1::WorkerStatus draining = busy;
  draining.set_deregistered(true);

  EXPECT_EQ(WorkerState(idle, now, Utc()), "idle");
  EXPECT_EQ(WorkerState(busy, now, Utc()), "busy job-0123456789ab task 1");
  pnn::v1::WorkerStatus profiling = idle;
  profiling.set_job_id("(profiling a new job)");
  profiling.set_task_index(-1);
  EXPECT_EQ(WorkerState(profiling, now, Utc()), "busy (profiling a new job)");
  EXPECT_EQ(WorkerState(backed_off, now, Utc()), "backed off until 22:13:50");
  // Once the back-off has passed, the worker is idle again.
  EXPECT_EQ(WorkerState(backed_off, now + absl::Minutes(1), Utc()), "idle");
  EXPECT_THAT(WorkerState(draining, now, Utc()), StartsWith("draining"));
  EXPECT_EQ(Ago(idle.last_heartbeat_time(), now), "0.4s ago");
  EXPECT_EQ(Ago(busy.last_heartbeat_time(), now), "3m5s ago");
  EXPECT_EQ(Ago(google::protobuf::Timestamp(), now), "-");

  const std::string table =
      FormatWorkerList({idle, busy, backed_off, draining}, now, Utc());
  std::istringstream lines(table);
  int rows = 0;
  for (std::string line; std::getline(lines, line); ++rows) {
    EXPECT_LE(line.size(), 100u) << line;
  }
  EXPECT_EQ(rows, 5);  // a header and one row per worker
  EXPECT_THAT(table, HasSubstr("10.0.0.17:50052"));

  pnn::v1::JobLogEntry entry;
  *entry.mutable_time() = at(now + absl::Milliseconds(123));
  entry.set_message("segment 1/2 (layers 1..3) dispatched to worker-3fa2c1-1");
  EXPECT_EQ(FormatLogEntry(entry, Utc()),
            "2023-11-14 22:13:20.123  segment 1/2 (layers 1..3) dispatched to "
            "worker-3fa2c1-1");
}

}  // namespace
}  // namespace pnn::client
