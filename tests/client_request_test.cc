// Building SubmitJobRequests from JSON files and flags, and the other flag
// parsers of pnnctl.
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "client/job_request.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn::client {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

TEST(ParseSubmitRequestJsonTest, ReadsAJobSpec) {
  auto request = ParseSubmitRequestJson(
      R"({"name": "n", "model": {"hidden_widths": [64, 32],
          "cut_after_layers": [1]}, "training": {"epochs": 2},
          "seed": "9"})",
      "job.json");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->spec().name(), "n");
  EXPECT_THAT(request->spec().model().hidden_widths(), ElementsAre(64, 32));
  EXPECT_THAT(request->spec().model().cut_after_layers(), ElementsAre(1));
  EXPECT_EQ(request->spec().training().epochs(), 2);
  EXPECT_EQ(request->spec().seed(), 9u);
  EXPECT_FALSE(request->conventional_baseline());
}

TEST(ParseSubmitRequestJsonTest, ReadsASubmitJobRequestWhenThereIsASpecKey) {
  auto request = ParseSubmitRequestJson(
      R"({"spec": {"name": "n", "training": {"epochs": 3}},
          "conventional_baseline": true})",
      "job.json");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->spec().name(), "n");
  EXPECT_EQ(request->spec().training().epochs(), 3);
  EXPECT_TRUE(request->conventional_baseline());
}

TEST(ParseSubmitRequestJsonTest, AcceptsCamelCaseNamesAsProtobufJsonDoes) {
  auto request = ParseSubmitRequestJson(
      R"({"spec": {}, "conventionalBaseline": true})", "job.json");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_TRUE(request->conventional_baseline());
}

TEST(ParseSubmitRequestJsonTest, UnknownFieldIsAnErrorNamingFileAndField) {
  auto request =
      ParseSubmitRequestJson(R"({"name": "n", "epochz": 3})", "my/job.json");
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(request.status().message(), HasSubstr("my/job.json"));
  EXPECT_THAT(request.status().message(), HasSubstr("pnn.v1.JobSpec"));
  EXPECT_THAT(request.status().message(), HasSubstr("epochz"));
}

TEST(ParseSubmitRequestJsonTest, SpecKeyWithJobSpecFieldsBesideItIsAnError) {
  // A "spec" key makes it a SubmitJobRequest, which has no "name".
  auto request = ParseSubmitRequestJson(R"({"spec": {}, "name": "n"})", "f");
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(), HasSubstr("pnn.v1.SubmitJobRequest"));
  EXPECT_THAT(request.status().message(), HasSubstr("\"spec\""));
  EXPECT_THAT(request.status().message(), HasSubstr("name"));
}

TEST(ParseSubmitRequestJsonTest, MalformedJsonIsAnErrorOnOneLine) {
  auto request = ParseSubmitRequestJson(R"({"name": "n",)", "job.json");
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(request.status().message(), HasSubstr("job.json"));
  EXPECT_THAT(request.status().message(), HasSubstr("not a JSON object"));
  EXPECT_EQ(request.status().message().find('\n'), std::string::npos);
}

TEST(ParseSubmitRequestJsonTest, TopLevelArrayIsAnError) {
  EXPECT_FALSE(ParseSubmitRequestJson("[1, 2]", "job.json").ok());
  EXPECT_FALSE(ParseSubmitRequestJson("", "job.json").ok());
}

TEST(ParseSubmitRequestJsonTest, WrongTypeIsAnError) {
  auto request =
      ParseSubmitRequestJson(R"({"training": {"epochs": "many"}})", "f");
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(), HasSubstr("pnn.v1.JobSpec"));
}

TEST(ApplyOverridesTest, EveryFlagSetsItsField) {
  SpecOverrides overrides;
  overrides.epochs = 7;
  overrides.train_limit = 1000;
  overrides.test_limit = 500;
  overrides.hidden_widths = "512, 256,128";
  overrides.cut_after = "1,2";
  overrides.kappa = 2.5;
  overrides.seed = 42;
  overrides.dataset = "emnist";
  overrides.recovery_epochs = 1;
  overrides.device = "cuda:1";
  overrides.name = "flags";
  overrides.baseline = true;
  overrides.micro_batches = 8;
  overrides.schedule = "1f1b";
  overrides.precision = "bf16";
  EXPECT_TRUE(overrides.any());
  pnn::v1::SubmitJobRequest request;
  ASSERT_TRUE(ApplyOverrides(overrides, &request).ok());
  const pnn::v1::JobSpec& spec = request.spec();
  EXPECT_EQ(spec.training().epochs(), 7);
  EXPECT_EQ(spec.dataset().train_limit(), 1000);
  EXPECT_EQ(spec.dataset().test_limit(), 500);
  EXPECT_THAT(spec.model().hidden_widths(), ElementsAre(512, 256, 128));
  EXPECT_THAT(spec.model().cut_after_layers(), ElementsAre(1, 2));
  EXPECT_FLOAT_EQ(spec.sil().kappa(), 2.5f);
  EXPECT_TRUE(spec.sil().has_kappa());
  EXPECT_EQ(spec.seed(), 42u);
  EXPECT_EQ(spec.dataset().path(), "emnist");
  EXPECT_EQ(spec.recovery().epochs(), 1);
  EXPECT_EQ(spec.device(), "cuda:1");
  EXPECT_EQ(spec.name(), "flags");
  EXPECT_TRUE(request.conventional_baseline());
  EXPECT_EQ(spec.pipeline().micro_batches(), 8);
  EXPECT_EQ(spec.pipeline().schedule(), pnn::v1::PIPELINE_SCHEDULE_1F1B);
  EXPECT_EQ(spec.training().precision(), pnn::v1::PRECISION_BF16);
}

TEST(ApplyOverridesTest, PrecisionNamesTheChoices) {
  EXPECT_EQ(*ParsePrecision("TF32"), pnn::v1::PRECISION_TF32);
  EXPECT_EQ(*ParsePrecision("PRECISION_FP32"), pnn::v1::PRECISION_FP32);
  for (const char* bad : {"fp16", "unspecified", ""}) {
    const auto parsed = ParsePrecision(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_THAT(std::string(parsed.status().message()),
                HasSubstr("expected fp32, bf16 or tf32"));
  }
}

TEST(ApplyOverridesTest, UnknownScheduleNamesTheChoices) {
  SpecOverrides overrides;
  overrides.schedule = "interleaved";
  pnn::v1::SubmitJobRequest request;
  const absl::Status status = ApplyOverrides(overrides, &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("--schedule=interleaved: expected gpipe or 1f1b"));
  EXPECT_EQ(*ParseSchedule("GPipe"), pnn::v1::PIPELINE_SCHEDULE_GPIPE);
  EXPECT_EQ(*ParseSchedule("PIPELINE_SCHEDULE_1F1B"),
            pnn::v1::PIPELINE_SCHEDULE_1F1B);
}

TEST(ApplyOverridesTest, NoOverridesChangeNothing) {
  auto request = ParseSubmitRequestJson(
      R"({"spec": {"name": "n", "dataset": {"train_limit": 10}},
          "conventional_baseline": true})",
      "f");
  ASSERT_TRUE(request.ok());
  const pnn::v1::SubmitJobRequest before = *request;
  SpecOverrides overrides;
  EXPECT_FALSE(overrides.any());
  ASSERT_TRUE(ApplyOverrides(overrides, &*request).ok());
  EXPECT_EQ(request->SerializeAsString(), before.SerializeAsString());
}

TEST(ApplyOverridesTest, ZeroAndFalseOverrideTheFile) {
  // --train_limit=0 means "all samples" and --baseline=false turns the
  // baseline off: both must win over the file.
  auto request = ParseSubmitRequestJson(
      R"({"spec": {"dataset": {"train_limit": 20000}},
          "conventional_baseline": true})",
      "f");
  ASSERT_TRUE(request.ok());
  SpecOverrides overrides;
  overrides.train_limit = 0;
  overrides.baseline = false;
  ASSERT_TRUE(ApplyOverrides(overrides, &*request).ok());
  EXPECT_EQ(request->spec().dataset().train_limit(), 0);
  EXPECT_FALSE(request->conventional_baseline());
}

TEST(ApplyOverridesTest, EpochsReplacePerSegmentEpochs) {
  auto request = ParseSubmitRequestJson(
      R"({"training": {"epochs": 5}, "segment_training": [
          {"epochs": 3, "learning_rate": 0.5}, {}]})",
      "f");
  ASSERT_TRUE(request.ok());
  SpecOverrides overrides;
  overrides.epochs = 2;
  ASSERT_TRUE(ApplyOverrides(overrides, &*request).ok());
  EXPECT_EQ(request->spec().training().epochs(), 2);
  ASSERT_EQ(request->spec().segment_training_size(), 2);
  EXPECT_EQ(request->spec().segment_training(0).epochs(), 0);
  // Other per-segment settings stay.
  EXPECT_FLOAT_EQ(request->spec().segment_training(0).learning_rate(), 0.5f);
}

TEST(ApplyOverridesTest, MalformedListIsAnErrorNamingTheFlag) {
  SpecOverrides overrides;
  overrides.cut_after = "3,x";
  pnn::v1::SubmitJobRequest request;
  absl::Status status = ApplyOverrides(overrides, &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("--cut-after"));
  EXPECT_THAT(status.message(), HasSubstr("3,x"));
}

TEST(ParseSubmitRequestJsonTest, UnknownEnumNameListsTheValidNames) {
  auto request = ParseSubmitRequestJson(
      R"({"model": {"activation": "RELU"}})", "job.json");
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(request.status().message(),
              AllOf(HasSubstr("job.json: model.activation: unknown value "
                              "\"RELU\"; expected one of ACTIVATION_RELU"),
                    Not(HasSubstr("UNSPECIFIED"))));
  // In a SubmitJobRequest, and in a repeated message field, too.
  request = ParseSubmitRequestJson(
      R"({"spec": {"segment_training": [{}, {"optimizer": "adam"}]}})",
      "req.json");
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(),
              AllOf(HasSubstr("req.json: spec.segment_training.optimizer: "
                              "unknown value \"adam\"; expected one of "),
                    HasSubstr("OPTIMIZER_ADAM")));
  // Valid names and numbers still parse.
  EXPECT_TRUE(ParseSubmitRequestJson(
                  R"({"model": {"activation": "ACTIVATION_RELU"}})", "f")
                  .ok());
  EXPECT_TRUE(
      ParseSubmitRequestJson(R"({"model": {"activation": 1}})", "f").ok());
}

TEST(ParseIntListTest, RejectsEmptyZeroNegativeAndJunk) {
  EXPECT_THAT(*ParseIntList("1,2,3", "f"), ElementsAre(1, 2, 3));
  EXPECT_FALSE(ParseIntList("", "f").ok());
  EXPECT_FALSE(ParseIntList("1,,2", "f").ok());
  EXPECT_FALSE(ParseIntList("0", "f").ok());
  EXPECT_FALSE(ParseIntList("-4", "f").ok());
  EXPECT_FALSE(ParseIntList("2.5", "f").ok());
  EXPECT_FALSE(ParseIntList("99999999999", "f").ok());
}

TEST(BuildSubmitRequestTest, FileThenFlags) {
  SpecOverrides overrides;
  overrides.epochs = 1;
  overrides.train_limit = 2000;
  overrides.name = "quick";
  auto request = BuildSubmitRequest(
      std::string(PNN_SOURCE_DIR) + "/examples/three_segments.json", overrides);
  ASSERT_TRUE(request.ok()) << request.status();
  const pnn::v1::JobSpec& spec = request->spec();
  EXPECT_EQ(spec.name(), "quick");
  EXPECT_EQ(spec.training().epochs(), 1);
  EXPECT_EQ(spec.dataset().train_limit(), 2000);
  // From the file.
  EXPECT_THAT(spec.model().cut_after_layers(), ElementsAre(2, 4));
  EXPECT_EQ(spec.recovery().epochs(), 1);
  EXPECT_EQ(spec.seed(), 7u);
  ASSERT_EQ(spec.segment_training_size(), 3);
  EXPECT_EQ(spec.segment_training(2).epochs(), 0);
  EXPECT_EQ(spec.segment_training(2).optimizer(), pnn::v1::OPTIMIZER_SGD);
}

TEST(BuildSubmitRequestTest, EveryExampleParses) {
  for (const char* name :
       {"fashion_mnist.json", "emnist_balanced.json", "three_segments.json"}) {
    auto request = BuildSubmitRequest(
        std::string(PNN_SOURCE_DIR) + "/examples/" + name, SpecOverrides());
    EXPECT_TRUE(request.ok()) << name << ": " << request.status();
  }
}

TEST(BuildSubmitRequestTest, FlagsAloneBuildASpec) {
  SpecOverrides overrides;
  overrides.hidden_widths = "32,32";
  overrides.cut_after = "1";
  auto request = BuildSubmitRequest("", overrides);
  ASSERT_TRUE(request.ok());
  EXPECT_THAT(request->spec().model().hidden_widths(), ElementsAre(32, 32));
  EXPECT_EQ(request->spec().name(), "");
}

TEST(BuildSubmitRequestTest, MissingFileNamesThePath) {
  auto request = BuildSubmitRequest("/no/such/job.json", SpecOverrides());
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(request.status().message(), HasSubstr("/no/such/job.json"));
}

TEST(BuildSubmitRequestTest, BadFileContentNamesThePath) {
  const std::string path = ::testing::TempDir() + "/client_bad_job.json";
  std::ofstream(path) << R"({"model": {"hidden_width": [3]}})";
  auto request = BuildSubmitRequest(path, SpecOverrides());
  std::remove(path.c_str());
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(), HasSubstr(path));
  EXPECT_THAT(request.status().message(), HasSubstr("hidden_width"));
}

TEST(ParseStateListTest, AcceptsShortAndFullNamesInAnyCase) {
  auto states = ParseStateList("running, SUCCEEDED,job_state_failed");
  ASSERT_TRUE(states.ok()) << states.status();
  EXPECT_THAT(*states, ElementsAre(pnn::v1::JOB_STATE_RUNNING,
                                   pnn::v1::JOB_STATE_SUCCEEDED,
                                   pnn::v1::JOB_STATE_FAILED));
  EXPECT_THAT(*ParseStateList(""), IsEmpty());
}

TEST(ParseStateListTest, UnknownStateIsAnError) {
  auto states = ParseStateList("running,done");
  ASSERT_FALSE(states.ok());
  EXPECT_THAT(states.status().message(), HasSubstr("'done'"));
  EXPECT_FALSE(ParseStateList("unspecified").ok());
}

TEST(ParseModelFormatTest, KnowsBothFormats) {
  EXPECT_EQ(*ParseModelFormat("safetensors"),
            pnn::v1::MODEL_FORMAT_SAFETENSORS);
  EXPECT_EQ(*ParseModelFormat("pnn"), pnn::v1::MODEL_FORMAT_PNN_WEIGHTS);
  EXPECT_EQ(*ParseModelFormat("MODEL_FORMAT_PNN_WEIGHTS"),
            pnn::v1::MODEL_FORMAT_PNN_WEIGHTS);
  EXPECT_FALSE(ParseModelFormat("onnx").ok());
}

}  // namespace
}  // namespace pnn::client
