#include "common/job_spec.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using pnn::v1::JobSpec;

TEST(JobSpecTest, DefaultsAreThePapersSetting) {
  auto resolved = ResolveJobSpec(JobSpec());
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_THAT(resolved->model().hidden_widths(),
              ElementsAre(256, 256, 256, 256, 256));
  EXPECT_THAT(resolved->model().cut_after_layers(), ElementsAre(3));
  EXPECT_EQ(resolved->model().activation(), pnn::v1::ACTIVATION_RELU);
  EXPECT_EQ(resolved->sil().distribution(), pnn::v1::SIL_DISTRIBUTION_UNIFORM);
  EXPECT_FLOAT_EQ(resolved->sil().kappa(), 1.0f);
  EXPECT_EQ(resolved->sil().input_mode(), pnn::v1::INPUT_MODE_SYNTHETIC_LABELS);
  EXPECT_EQ(resolved->training().epochs(), 5);
  EXPECT_EQ(resolved->training().batch_size(), 128);
  EXPECT_FLOAT_EQ(resolved->training().learning_rate(), 1e-3f);
  EXPECT_EQ(resolved->training().optimizer(), pnn::v1::OPTIMIZER_ADAM);
  EXPECT_EQ(resolved->training().precision(), pnn::v1::PRECISION_FP32);
  EXPECT_EQ(resolved->recovery().epochs(), 0);
  EXPECT_EQ(resolved->dataset().path(), "fashion-mnist");
  EXPECT_EQ(resolved->seed(), 1u);
  EXPECT_EQ(resolved->device(), "cpu");
  // Resolving is idempotent.
  auto again = ResolveJobSpec(*resolved);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->SerializeAsString(), resolved->SerializeAsString());
}

TEST(JobSpecTest, ExplicitZeroSeedAndKappaSurvive) {
  JobSpec spec;
  spec.set_seed(0);
  spec.mutable_sil()->set_input_noise_std(0.25f);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->seed(), 0u);
  EXPECT_FLOAT_EQ(resolved->sil().input_noise_std(), 0.25f);
}

TEST(JobSpecTest, SegmentOverridesInheritUnsetFields) {
  JobSpec spec;
  spec.mutable_training()->set_learning_rate(0.01f);
  spec.add_segment_training()->set_epochs(2);
  auto* second = spec.add_segment_training();
  second->set_optimizer(pnn::v1::OPTIMIZER_SGD);
  second->set_momentum(0.9f);
  spec.mutable_recovery()->set_epochs(1);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  const auto first = SegmentTrainingConfig(*resolved, 0);
  EXPECT_EQ(first.epochs(), 2);
  EXPECT_FLOAT_EQ(first.learning_rate(), 0.01f);
  EXPECT_EQ(first.optimizer(), pnn::v1::OPTIMIZER_ADAM);
  const auto last = SegmentTrainingConfig(*resolved, 1);
  EXPECT_EQ(last.epochs(), 5);
  EXPECT_EQ(last.optimizer(), pnn::v1::OPTIMIZER_SGD);
  EXPECT_FLOAT_EQ(last.momentum(), 0.9f);
  const auto recovery = RecoveryTrainingConfig(*resolved);
  EXPECT_EQ(recovery.epochs(), 1);
  EXPECT_EQ(recovery.batch_size(), 128);
}

TEST(JobSpecTest, PrecisionIsInheritedAndTf32NeedsCuda) {
  JobSpec spec;
  spec.set_device("cuda");
  spec.mutable_training()->set_precision(pnn::v1::PRECISION_TF32);
  spec.add_segment_training()->set_epochs(2);
  spec.add_segment_training()->set_precision(pnn::v1::PRECISION_BF16);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(SegmentTrainingConfig(*resolved, 0).precision(),
            pnn::v1::PRECISION_TF32);
  EXPECT_EQ(SegmentTrainingConfig(*resolved, 1).precision(),
            pnn::v1::PRECISION_BF16);
  EXPECT_EQ(RecoveryTrainingConfig(*resolved).precision(),
            pnn::v1::PRECISION_TF32);

  // The same spec on the CPU: TF32 would silently be fp32 there.
  spec.set_device("cpu");
  auto refused = ResolveJobSpec(spec);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("training.precision: PRECISION_TF32 applies to CUDA "
                        "devices only; this job's device is \"cpu\""));
  spec.mutable_training()->set_precision(pnn::v1::PRECISION_BF16);
  spec.mutable_segment_training(0)->set_precision(pnn::v1::PRECISION_TF32);
  EXPECT_THAT(ResolveJobSpec(spec).status().message(),
              HasSubstr("segment_training[0].precision"));
  spec.mutable_segment_training(0)->set_precision(
      static_cast<pnn::v1::Precision>(9));
  EXPECT_THAT(ResolveJobSpec(spec).status().message(),
              HasSubstr("segment_training[0].precision: unknown precision"));
}

TEST(JobSpecTest, CutsIntoSegmentsAtTheCutPoints) {
  JobSpec spec;
  spec.mutable_model()->add_hidden_widths(8);
  spec.mutable_model()->add_hidden_widths(6);
  spec.mutable_model()->add_hidden_widths(5);
  spec.mutable_model()->add_cut_after_layers(1);
  spec.mutable_model()->add_cut_after_layers(3);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  const auto network = NetworkArchitecture(*resolved, ImageShape{1, 2, 5}, 3);
  ASSERT_TRUE(network.ok()) << network.status();
  EXPECT_THAT(network->input_shape, ElementsAre(10));
  ASSERT_EQ(network->layers.size(), 4u);
  EXPECT_EQ(network->layers[3].linear().out_features(), 3);
  const auto segments = CutNetwork(*resolved, *network);
  ASSERT_TRUE(segments.ok()) << segments.status();
  ASSERT_EQ(segments->size(), 3u);
  const Architecture& first = (*segments)[0].architecture;
  const Architecture& second = (*segments)[1].architecture;
  const Architecture& third = (*segments)[2].architecture;
  EXPECT_EQ(first.first_layer, 1);
  EXPECT_EQ(first.last_layer(), 1);
  EXPECT_THAT(first.input_shape, ElementsAre(10));
  EXPECT_FALSE(first.leading_activation);
  EXPECT_EQ(second.first_layer, 2);
  EXPECT_EQ(second.last_layer(), 3);
  EXPECT_THAT(second.input_shape, ElementsAre(8));
  EXPECT_TRUE(second.leading_activation);
  EXPECT_EQ(third.first_layer, 4);
  EXPECT_THAT(third.input_shape, ElementsAre(5));
}

struct InvalidCase {
  const char* json;
  const char* field;
  const char* rule;
};

TEST(JobSpecTest, ModelParallelJobsDefaultToFourMicroBatchesPerStage) {
  pnn::v1::JobSpec spec;
  spec.set_parallelism(pnn::v1::PARALLELISM_MODEL_PARALLEL);
  spec.mutable_model()->add_cut_after_layers(2);
  spec.mutable_model()->add_cut_after_layers(4);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->pipeline().micro_batches(), 12);  // 3 stages
  EXPECT_EQ(resolved->pipeline().schedule(), pnn::v1::PIPELINE_SCHEDULE_GPIPE);
  // Never more micro-batches than a batch has rows.
  spec.mutable_training()->set_batch_size(8);
  resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->pipeline().micro_batches(), 8);
  // Resolving again changes nothing.
  auto again = ResolveJobSpec(*resolved);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->pipeline().micro_batches(), 8);
  // Other jobs have no pipeline.
  spec.set_parallelism(pnn::v1::PARALLELISM_PARTITIONED);
  resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok());
  EXPECT_FALSE(resolved->has_pipeline());
}

TEST(JobSpecTest, InvalidSpecsNameTheFieldAndTheRule) {
  const std::vector<InvalidCase> cases = {
      {R"({"model": {"hidden_widths": [256, -3]}})", "model.hidden_widths[1]",
       "between 1 and"},
      {R"({"model": {"cut_after_layers": [7]}})", "model.cut_after_layers[0]",
       "strictly increasing"},
      {R"({"model": {"cut_after_layers": [3, 2]}})",
       "model.cut_after_layers[1]", "strictly increasing"},
      {R"({"model": {"cut_after_layers": [0]}})", "model.cut_after_layers[0]",
       "between 1 and 5"},
      {R"({"sil": {"kappa": -1}})", "sil.kappa", "must be in (0"},
      {R"({"sil": {"input_noise_std": -0.5}})", "sil.input_noise_std", ">= 0"},
      {R"({"training": {"epochs": -2}})", "training.epochs", "between 1"},
      {R"({"training": {"batch_size": 100000000}})", "training.batch_size",
       "between 1 and"},
      {R"({"training": {"learning_rate": -0.1}})", "training.learning_rate",
       "must be in (0"},
      {R"({"training": {"momentum": 0.9}})", "training.momentum",
       "OPTIMIZER_SGD only"},
      {R"({"segment_training": [{}, {}, {}]})", "segment_training",
       "make 2 segments"},
      {R"({"segment_training": [{"epochs": 100000}]})",
       "segment_training[0].epochs", "between 1"},
      {R"({"recovery": {"epochs": -1}})", "recovery.epochs", "between 0"},
      {R"({"dataset": {"train_limit": -5}})", "dataset.train_limit", ">= 0"},
      {R"({"device": "tpu"})", "device", "\"cpu\", \"cuda\""},
      {R"({"dataset": {"emnist_split": "../../etc/x"}})",
       "dataset.emnist_split", "split name"},
      {R"({"model": {"hidden_widths": [4], "cut_after_layers": [1]},
           "device": "cuda:x"})",
       "device", "cuda:N"},
      {R"({"parallelism": "PARALLELISM_MODEL_PARALLEL",
           "training": {"batch_size": 16}, "pipeline": {"micro_batches": 17}})",
       "pipeline.micro_batches", "[1, training.batch_size = 16]"},
      {R"({"parallelism": "PARALLELISM_MODEL_PARALLEL",
           "pipeline": {"micro_batches": -2}})",
       "pipeline.micro_batches", "got -2"},
      {R"({"pipeline": {"micro_batches": 4}})", "pipeline",
       "model_parallel jobs only"},
      {R"({"parallelism": "PARALLELISM_CONVENTIONAL",
           "pipeline": {"schedule": "PIPELINE_SCHEDULE_1F1B"}})",
       "pipeline", "model_parallel jobs only"},
  };
  // Fault: 3.9 MiB names were accepted and kept with every job.
  const std::string long_name = R"({"name": ")" + std::string(257, 'n') + R"("})";
  std::vector<InvalidCase> all = cases;
  all.push_back({long_name.c_str(), "name", "at most 256 bytes"});
  for (const auto& c : all) {
    auto spec = ParseJobSpecJson(c.json);
    ASSERT_TRUE(spec.ok()) << c.json << ": " << spec.status();
    auto resolved = ResolveJobSpec(*spec);
    ASSERT_FALSE(resolved.ok()) << c.json;
    EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(resolved.status().message());
    EXPECT_THAT(message, HasSubstr(c.field)) << c.json;
    EXPECT_THAT(message, HasSubstr(c.rule)) << c.json;
  }
}

TEST(JobSpecTest, ValidatesAgainstTheDataSet) {
  JobSpec spec;
  spec.mutable_sil()->set_distribution(pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL);
  spec.mutable_model()->add_hidden_widths(16);
  spec.mutable_model()->add_hidden_widths(4);
  spec.mutable_model()->add_cut_after_layers(2);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok());
  EXPECT_TRUE(ValidateAgainstData(*resolved, {1, 28, 28}, 4).ok());
  absl::Status status = ValidateAgainstData(*resolved, {1, 28, 28}, 10);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("model.cut_after_layers[0]"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("ORTHOGONAL"));
  EXPECT_FALSE(ValidateAgainstData(*resolved, {1, 28, 28}, 1).ok());

  JobSpec huge;
  huge.mutable_model()->add_hidden_widths(65536);
  huge.mutable_model()->add_hidden_widths(65536);
  huge.mutable_model()->add_cut_after_layers(1);
  auto huge_resolved = ResolveJobSpec(huge);
  ASSERT_TRUE(huge_resolved.ok());
  status = ValidateAgainstData(*huge_resolved, {1, 28, 28}, 10);
  EXPECT_THAT(std::string(status.message()), HasSubstr("parameters"));
}

TEST(JobSpecTest, JsonParsingRejectsUnknownFields) {
  auto spec = ParseJobSpecJson(R"({"modle": {}})");
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("modle"));
  EXPECT_FALSE(ParseJobSpecJson("{not json").ok());
  auto named = ParseJobSpecJson(
      R"({"sil": {"distribution": "SIL_DISTRIBUTION_NORMAL"}, "seed": "42"})");
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(named->sil().distribution(), pnn::v1::SIL_DISTRIBUTION_NORMAL);
  EXPECT_EQ(named->seed(), 42u);
}

// Found by tests/fuzz/job_spec_fuzzer: SimpleAtoi accepts "007", "+1" and
// " 1", but the coordinator dispatches a task only to a worker whose device
// string equals the task's, so such a job stayed queued for ever.
TEST(JobSpecTest, DeviceIndexMustBePlainDecimal) {
  for (const char* device : {"cpu", "cuda", "cuda:0", "cuda:7", "cuda:12"}) {
    JobSpec spec;
    spec.set_device(device);
    auto resolved = ResolveJobSpec(spec);
    ASSERT_TRUE(resolved.ok()) << device << ": " << resolved.status();
    EXPECT_EQ(resolved->device(), device);
  }
  for (const char* device : {"cuda:007", "cuda:00", "cuda:+1", "cuda: 1",
                             "cuda:1 ", "cuda:-0", "cuda:", "cuda:1x",
                             "cuda:99999999999"}) {
    JobSpec spec;
    spec.set_device(device);
    auto resolved = ResolveJobSpec(spec);
    ASSERT_FALSE(resolved.ok()) << device;
    EXPECT_THAT(std::string(resolved.status().message()),
                HasSubstr("cuda:N")) << device;
  }
}

}  // namespace
}  // namespace pnn
