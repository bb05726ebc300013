#include "common/trainer.h"

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "common/job_spec.h"
#include "common/partition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

// Synthetic 36-pixel, 4-class data and a 36-32-16-4 network cut after
// layer 1: small enough to train in well under a second.
class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SyntheticDatasetOptions options;
    options.train_samples = 1024;
    options.test_samples = 512;
    data_ = MakeSyntheticDataset(options);
    spec_.mutable_model()->add_hidden_widths(32);
    spec_.mutable_model()->add_hidden_widths(16);
    spec_.mutable_model()->add_cut_after_layers(1);
    spec_.mutable_training()->set_epochs(10);
    spec_.mutable_training()->set_batch_size(32);
    spec_.mutable_sil()->set_input_noise_std(0.05f);
    auto resolved = ResolveJobSpec(spec_);
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    spec_ = *resolved;
  }

  std::vector<pnn::v1::SegmentTask> Plan() {
    auto tasks = PlanSegmentTasks(spec_, data_.input_width(),
                                  data_.num_classes, "test-job");
    EXPECT_TRUE(tasks.ok()) << tasks.status();
    return tasks.ok() ? *tasks : std::vector<pnn::v1::SegmentTask>();
  }

  Dataset data_;
  pnn::v1::JobSpec spec_;
};

TEST_F(TrainerTest, SegmentsTrainIndependentlyAndTheJoinedNetworkLearns) {
  auto tasks = Plan();
  ASSERT_EQ(tasks.size(), 2u);
  // Independence is visible in the tasks: SIL tables only, no other segment.
  EXPECT_EQ(tasks[0].input_case(), pnn::v1::SegmentTask::INPUT_NOT_SET);
  EXPECT_TRUE(tasks[0].has_target_sil());
  EXPECT_EQ(tasks[1].input_case(), pnn::v1::SegmentTask::kInputSil);
  EXPECT_FALSE(tasks[1].has_target_sil());
  EXPECT_EQ(tasks[0].target_sil().data(), tasks[1].input_sil().data());

  // Train the last segment first: order does not matter.
  std::vector<pnn::v1::SegmentWeights> weights(2);
  for (int index : {1, 0}) {
    int epochs_seen = 0;
    TrainOptions options;
    options.on_epoch = [&](const pnn::v1::EpochMetrics& metrics,
                           const MlpSegment&) {
      ++epochs_seen;
      EXPECT_EQ(metrics.epoch(), epochs_seen);
      EXPECT_GT(metrics.samples_per_second(), 0);
    };
    auto result = TrainSegment(tasks[index], data_, options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(epochs_seen, 10);
    ASSERT_EQ(result->epochs_size(), 10);
    EXPECT_LT(result->epochs(9).train_loss(), result->epochs(0).train_loss());
    EXPECT_GT(result->cost().parameter_bytes(), 0);
    EXPECT_GT(result->cost().wall_seconds(), 0);
    weights[index] = result->weights();
  }
  auto joined = AssembleNetwork(weights, spec_.model().activation());
  ASSERT_TRUE(joined.ok()) << joined.status();
  auto test = Evaluate(*joined, data_.test, data_.num_classes, "cpu");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_GT(test->accuracy(), 0.9);
  EXPECT_EQ(test->per_class_size(), 4);
  EXPECT_EQ(test->samples(), 512);
}

TEST_F(TrainerTest, TrainingIsDeterministic) {
  auto tasks = Plan();
  auto a = TrainSegment(tasks[0], data_, TrainOptions());
  auto b = TrainSegment(tasks[0], data_, TrainOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->weights().SerializeAsString(), b->weights().SerializeAsString());
}

TEST_F(TrainerTest, PreviousOutputsModeNeedsAndUsesUpstreamWeights) {
  spec_.mutable_sil()->set_input_mode(pnn::v1::INPUT_MODE_PREVIOUS_OUTPUTS);
  auto tasks = Plan();
  ASSERT_TRUE(NeedsUpstream(tasks[1]));
  EXPECT_FALSE(TrainSegment(tasks[1], data_, TrainOptions()).ok());
  auto first = TrainSegment(tasks[0], data_, TrainOptions());
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(AttachUpstream({first->weights()}, &tasks[1]).ok());
  auto second = TrainSegment(tasks[1], data_, TrainOptions());
  ASSERT_TRUE(second.ok()) << second.status();
  auto joined = AssembleNetwork({first->weights(), second->weights()},
                                spec_.model().activation());
  ASSERT_TRUE(joined.ok());
  auto test = Evaluate(*joined, data_.test, data_.num_classes, "cpu");
  ASSERT_TRUE(test.ok());
  EXPECT_GT(test->accuracy(), 0.9);
}

TEST_F(TrainerTest, ConventionalTrainingLearns) {
  MlpSegment network(1, NetworkWidths(spec_, data_.input_width(), 4),
                     spec_.model().activation());
  InitializeWeights(network, spec_.seed());
  auto trained = TrainNetwork(network, data_.train, spec_.training(),
                              spec_.seed(), TrainOptions());
  ASSERT_TRUE(trained.ok()) << trained.status();
  EXPECT_EQ(trained->epochs.size(), 10u);
  auto test = Evaluate(network, data_.test, 4, "cpu");
  ASSERT_TRUE(test.ok());
  EXPECT_GT(test->accuracy(), 0.9);
}

TEST_F(TrainerTest, MalformedTasksAreRejectedWithReasons) {
  const auto tasks = Plan();
  struct Case {
    std::string name;
    std::function<void(pnn::v1::SegmentTask*)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"widths", [](auto* t) { t->add_widths(3); }, "widths"},
      {"index", [](auto* t) { t->set_segment_index(5); }, "segment_index"},
      {"classes", [](auto* t) { t->set_num_classes(7); }, "same data set"},
      {"unresolved", [](auto* t) { t->mutable_training()->set_epochs(0); },
       "resolved"},
      {"no input", [](auto* t) { t->clear_input_sil(); }, "needs input_sil"},
      {"sil shape",
       [](auto* t) { t->mutable_input_sil()->set_shape(1, 99); },
       "must have shape"},
      {"noise", [](auto* t) { t->set_input_noise_std(-1); }, "input_noise_std"},
      {"target on last",
       [&](auto* t) { *t->mutable_target_sil() = tasks[0].target_sil(); },
       "no target_sil"},
  };
  for (const auto& c : cases) {
    pnn::v1::SegmentTask task = tasks[1];
    c.mutate(&task);
    auto result = TrainSegment(task, data_, TrainOptions());
    ASSERT_FALSE(result.ok()) << c.name;
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(c.expected))
        << c.name;
  }
  pnn::v1::SegmentTask first = tasks[0];
  first.clear_target_sil();
  EXPECT_THAT(std::string(TrainSegment(first, data_, TrainOptions())
                              .status()
                              .message()),
              HasSubstr("needs target_sil"));
}

TEST_F(TrainerTest, CancellationStopsTraining) {
  auto tasks = Plan();
  int polls = 0;
  TrainOptions options;
  options.should_stop = [&polls] { return ++polls > 3; };
  auto result = TrainSegment(tasks[0], data_, options);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(TrainerTest, DivergenceIsReportedNotReturnedAsAModel) {
  spec_.mutable_sil()->set_kappa(1000.0f);
  spec_.mutable_training()->set_optimizer(pnn::v1::OPTIMIZER_SGD);
  spec_.mutable_training()->set_learning_rate(5.0f);
  auto tasks = Plan();
  auto result = TrainSegment(tasks[0], data_, TrainOptions());
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("diverged"));
}

TEST_F(TrainerTest, CudaWithoutCudaIsAClearError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "CUDA is available here";
  auto tasks = Plan();
  tasks[0].set_device("cuda");
  auto result = TrainSegment(tasks[0], data_, TrainOptions());
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("CUDA is not available"));
}

}  // namespace
}  // namespace pnn
