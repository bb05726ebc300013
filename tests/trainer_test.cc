#include "common/trainer.h"

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include "common/job_spec.h"
#include "common/model.h"
#include "common/partition.h"
#include "common/precision.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/architectures.h"
#include "tests/small_job.h"

namespace pnn {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The small job of tests/small_job.h: trains in well under a second.
class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = SmallJobData();
    auto resolved = SmallJobSpec();
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    spec_ = *resolved;
  }

  std::vector<pnn::v1::SegmentTask> Plan() {
    auto tasks = PlanSegmentTasks(spec_, data_.image_shape(),
                                  data_.num_classes, "test-job");
    EXPECT_TRUE(tasks.ok()) << tasks.status();
    return tasks.ok() ? *tasks : std::vector<pnn::v1::SegmentTask>();
  }

  Architecture Network() const {
    auto network =
        NetworkArchitecture(spec_, data_.image_shape(), data_.num_classes);
    EXPECT_TRUE(network.ok()) << network.status();
    return network.ok() ? *network : Architecture();
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
                           const SegmentModel&) {
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
  auto joined = AssembleNetwork(weights, Network());
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

TEST_F(TrainerTest, CheckpointsComeAtEvenlySpacedBatchesAndEpochEnds) {
  auto tasks = Plan();
  pnn::v1::SegmentTask task = tasks[1];
  task.mutable_training()->set_epochs(2);
  task.set_checkpoints_per_epoch(4);  // 32 batches per epoch: every 8th
  task.set_resume_checkpoints(true);
  std::vector<pnn::v1::Checkpoint> checkpoints;
  TrainOptions options;
  options.on_checkpoint = [&](pnn::v1::Checkpoint checkpoint) {
    checkpoints.push_back(std::move(checkpoint));
  };
  auto result = TrainSegment(task, data_, options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(checkpoints.size(), 8u);
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    const auto& checkpoint = checkpoints[i];
    EXPECT_DOUBLE_EQ(checkpoint.epochs_done(), 0.25 * (i + 1));
    EXPECT_EQ(checkpoint.batches_done(), 8 * (i % 4 + 1));
    EXPECT_GE(checkpoint.cpu_seconds(), 0);
    // Epoch ends carry the resumable state (with the weights inside);
    // other points carry only the weights.
    const bool epoch_end = i % 4 == 3;
    EXPECT_EQ(checkpoint.has_state(), epoch_end);
    EXPECT_EQ(checkpoint.has_weights(), !epoch_end);
    if (epoch_end) {
      EXPECT_EQ(checkpoint.state().epochs_done(), checkpoint.epoch());
      EXPECT_FALSE(checkpoint.state().optimizer_state().empty());
      EXPECT_EQ(checkpoint.state().epochs_size(), checkpoint.epoch());
    }
  }
  // The last checkpoint is the trained segment.
  EXPECT_EQ(checkpoints.back().state().weights().SerializeAsString(),
            result->weights().SerializeAsString());
}

TEST_F(TrainerTest, ResumingFromAnEpochStateMatchesAnUninterruptedRun) {
  spec_.mutable_sil()->set_input_noise_std(0);  // noise restarts on resume
  for (const pnn::v1::SegmentTask& planned : Plan()) {
    pnn::v1::SegmentTask task = planned;
    task.mutable_training()->set_epochs(3);
    task.set_resume_checkpoints(true);
    std::vector<pnn::v1::TrainingState> states;
    TrainOptions options;
    options.on_checkpoint = [&](pnn::v1::Checkpoint checkpoint) {
      if (checkpoint.has_state()) states.push_back(checkpoint.state());
    };
    auto uninterrupted = TrainSegment(task, data_, options);
    ASSERT_TRUE(uninterrupted.ok()) << uninterrupted.status();
    ASSERT_EQ(states.size(), 3u);

    // A retry after epoch 1: same shuffles, same optimizer moments.
    pnn::v1::SegmentTask retry = task;
    *retry.mutable_resume() = states[0];
    int epochs_trained = 0;
    TrainOptions retry_options;
    retry_options.on_epoch = [&](const pnn::v1::EpochMetrics& metrics,
                                 const SegmentModel&) {
      EXPECT_EQ(metrics.epoch(), epochs_trained + 2);
      ++epochs_trained;
    };
    auto resumed = TrainSegment(retry, data_, retry_options);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(epochs_trained, 2);
    ASSERT_EQ(resumed->epochs_size(), 3);
    EXPECT_DOUBLE_EQ(resumed->epochs(0).train_loss(),
                     uninterrupted->epochs(0).train_loss());
    EXPECT_EQ(resumed->weights().SerializeAsString(),
              uninterrupted->weights().SerializeAsString())
        << "segment " << task.segment_index();
  }
}

TEST_F(TrainerTest, AResumeStateMustFitTheTask) {
  auto tasks = Plan();
  pnn::v1::SegmentTask task = tasks[0];
  task.mutable_resume()->set_epochs_done(1);
  task.mutable_resume()->mutable_weights()->set_segment_index(1);
  auto wrong_segment = TrainSegment(task, data_, TrainOptions());
  EXPECT_EQ(wrong_segment.status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_segment.status().message(), HasSubstr("resume state"));
  task.mutable_resume()->mutable_weights()->set_segment_index(0);
  task.mutable_resume()->set_epochs_done(99);
  EXPECT_THAT(TrainSegment(task, data_, TrainOptions()).status().message(),
              HasSubstr("epochs_done 99"));
  // Weights that do not fit the segment's shapes are refused, not loaded.
  task.mutable_resume()->set_epochs_done(1);
  EXPECT_FALSE(TrainSegment(task, data_, TrainOptions()).ok());
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
  auto joined =
      AssembleNetwork({first->weights(), second->weights()}, Network());
  ASSERT_TRUE(joined.ok());
  auto test = Evaluate(*joined, data_.test, data_.num_classes, "cpu");
  ASSERT_TRUE(test.ok());
  EXPECT_GT(test->accuracy(), 0.9);
}

// A layer list cut after its second convolution: the first segment
// learns [classes, C, H, W] SIL targets, the second learns the classes
// from them, and the joined network classifies (98.8% here, conventional
// training of the same network 95.5%).
TEST_F(TrainerTest, ConvolutionalSegmentsLearnFromImageShapedSil) {
  pnn::v1::JobSpec spec = spec_;
  spec.mutable_model()->clear_hidden_widths();
  spec.mutable_model()->clear_cut_after_layers();
  for (const auto& layer : SmallCnnLayers(4)) {
    *spec.mutable_model()->add_layers() = layer;
  }
  spec.mutable_model()->add_cut_after_layers(3);  // after conv3, 6x2x2
  spec.mutable_training()->set_epochs(20);
  SyntheticDatasetOptions options;
  options.train_samples = 1024;
  options.test_samples = 512;
  options.channels = 2;
  options.rows = 8;
  options.cols = 8;
  options.noise = 0.1f;  // a small CNN: at 0.35 even conventional is ~57%
  const Dataset data = MakeSyntheticDataset(options);
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  auto tasks = PlanSegmentTasks(*resolved, data.image_shape(),
                                data.num_classes, "cnn-job");
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_THAT((*tasks)[0].target_sil().shape(), ElementsAre(4, 6, 2, 2));
  EXPECT_THAT((*tasks)[1].input_shape(), ElementsAre(6, 2, 2));
  EXPECT_TRUE((*tasks)[1].leading_activation());
  std::vector<pnn::v1::SegmentWeights> weights;
  for (const auto& task : *tasks) {
    auto result = TrainSegment(task, data, TrainOptions());
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_LT(result->epochs().rbegin()->train_loss(),
              result->epochs(0).train_loss());
    weights.push_back(result->weights());
  }
  auto network = NetworkArchitecture(*resolved, data.image_shape(), 4);
  ASSERT_TRUE(network.ok());
  auto joined = AssembleNetwork(weights, *network);
  ASSERT_TRUE(joined.ok()) << joined.status();
  auto test = Evaluate(*joined, data.test, data.num_classes, "cpu");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_GT(test->accuracy(), 0.9);
}

TEST_F(TrainerTest, ConventionalTrainingLearns) {
  SegmentModel network(Network());
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
      {"layers", [](auto* t) { t->add_layers()->mutable_flatten(); },
       "layer specs"},
      {"input shape", [](auto* t) { t->add_input_shape(3); },
       "flat input"},
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

// bf16 autocast on the CPU: the same segments still learn, the arithmetic
// really changed (the weights differ from fp32's), the weights stay fp32,
// and autocast is off again afterwards.
TEST_F(TrainerTest, Bf16AutocastTrainsAndIsScopedToTraining) {
  auto tasks = Plan();
  std::vector<pnn::v1::SegmentWeights> weights;
  for (auto& task : tasks) {
    task.mutable_training()->set_precision(pnn::v1::PRECISION_BF16);
    auto result = TrainSegment(task, data_, TrainOptions());
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->cost().device_peak_allocated_bytes(), 0);
    weights.push_back(result->weights());
  }
  EXPECT_FALSE(IsAutocastEnabled(c10::Device(c10::kCPU)));
  auto fp32 = TrainSegment(Plan()[0], data_, TrainOptions());
  ASSERT_TRUE(fp32.ok());
  EXPECT_NE(fp32->weights().SerializeAsString(),
            weights[0].SerializeAsString());
  auto joined = AssembleNetwork(weights, Network());
  ASSERT_TRUE(joined.ok()) << joined.status();
  for (const auto& parameter : (*joined)->parameters()) {
    EXPECT_EQ(parameter.scalar_type(), at::kFloat);
  }
  auto test = Evaluate(*joined, data_.test, data_.num_classes, "cpu");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_GT(test->accuracy(), 0.85);
}

TEST_F(TrainerTest, Tf32OnTheCpuIsRefusedNotIgnored) {
  auto task = Plan()[0];
  task.mutable_training()->set_precision(pnn::v1::PRECISION_TF32);
  auto result = TrainSegment(task, data_, TrainOptions());
  ASSERT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("PRECISION_TF32 applies to CUDA devices only"));
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
