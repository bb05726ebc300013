// Runs the real pnn-train binary and reads its JSON output.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "pnn/v1/report.pb.h"
#include "tests/test_util.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

struct RunResult {
  int exit_code = -1;
  std::string output;
};

RunResult RunPnnTrain(const std::string& arguments) {
  const std::string command =
      std::string(PNN_TRAIN_BINARY) + " " + arguments;
  RunResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST(PnnTrainCliTest, JsonOutputCarriesBothAccuracies) {
  TempDir dir;
  const std::string job = dir.path() + "/job.json";
  WriteFileBytes(job, R"({"model": {"hidden_widths": [64, 64, 64]},
                          "training": {"epochs": 3}})");
  const RunResult run = RunPnnTrain(
      "--job " + job + " --train_limit 2000 --test_limit 500 --threads 1 "
      "--cut_after 2 --output json 2>/dev/null");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  pnn::v1::ComparisonReport report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(run.output, &report)
                  .ok())
      << run.output;
  EXPECT_THAT(run.output, HasSubstr("\"test_accuracy\""));
  EXPECT_GT(report.conventional().test_accuracy(), 0.4);
  EXPECT_LE(report.conventional().test_accuracy(), 1.0);
  EXPECT_GT(report.partitioned().test_accuracy(), 0.4);
  EXPECT_EQ(report.spec().model().cut_after_layers(0), 2);
  EXPECT_EQ(report.dataset().train_samples(), 2000);
  EXPECT_EQ(report.threads(), 1);
}

TEST(PnnTrainCliTest, TableOutputAndErrors) {
  const RunResult table = RunPnnTrain(
      "--epochs 1 --train_limit 1000 --test_limit 200 --threads 1 "
      "--hidden_widths 32,32 --cut_after 1 2>&1");
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_THAT(table.output, HasSubstr("partitioned (joined)"));
  EXPECT_THAT(table.output, HasSubstr("segment 2"));
  EXPECT_THAT(table.output, HasSubstr("[segment 1/2] epoch 1/1"));

  const RunResult bad_cut = RunPnnTrain("--cut_after 9 2>&1");
  EXPECT_EQ(bad_cut.exit_code, 1);
  EXPECT_THAT(bad_cut.output, HasSubstr("model.cut_after_layers[0]"));

  const RunResult bad_dir = RunPnnTrain("--data_dir /nonexistent/pnn 2>&1");
  EXPECT_EQ(bad_dir.exit_code, 1);
  EXPECT_THAT(bad_dir.output, HasSubstr("/nonexistent/pnn"));

  const RunResult bad_output = RunPnnTrain("--output xml 2>&1");
  EXPECT_EQ(bad_output.exit_code, 1);
  EXPECT_THAT(bad_output.output, HasSubstr("--output"));

  const RunResult bad_precision = RunPnnTrain("--precision fp16 2>&1");
  EXPECT_EQ(bad_precision.exit_code, 1);
  EXPECT_THAT(bad_precision.output, HasSubstr("expected fp32, bf16 or tf32"));
  const RunResult tf32_on_cpu = RunPnnTrain("--precision tf32 2>&1");
  EXPECT_EQ(tf32_on_cpu.exit_code, 1);
  EXPECT_THAT(tf32_on_cpu.output,
              HasSubstr("PRECISION_TF32 applies to CUDA devices only"));
}

}  // namespace
}  // namespace pnn
