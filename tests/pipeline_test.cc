// PipelineStageTrainer: a model-parallel pipeline run in-process (the first
// stage through TrainSegment with remote_loss, later stages as
// PipelineStageTrainer) must be conventional end-to-end training, to the
// last bit of tolerance.
#include "common/pipeline.h"

#include <ATen/ATen.h>

#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "common/job_spec.h"
#include "common/model.h"
#include "common/partition.h"
#include "common/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

// 36-pixel, 4-class synthetic data and a 36-32-24-16-4 network.
class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SyntheticDatasetOptions options;
    options.train_samples = 1000;  // 32 batches of 32, the last one short
    options.test_samples = 256;
    data_ = MakeSyntheticDataset(options);
  }

  pnn::v1::JobSpec Spec(std::vector<int> cuts, int epochs) {
    pnn::v1::JobSpec spec;
    for (int width : {32, 24, 16}) {
      spec.mutable_model()->add_hidden_widths(width);
    }
    for (int cut : cuts) spec.mutable_model()->add_cut_after_layers(cut);
    spec.mutable_training()->set_epochs(epochs);
    spec.mutable_training()->set_batch_size(32);
    spec.set_seed(11);
    spec.set_parallelism(pnn::v1::PARALLELISM_MODEL_PARALLEL);
    spec.set_evaluations_per_epoch(3);
    auto resolved = ResolveJobSpec(spec);
    EXPECT_TRUE(resolved.ok()) << resolved.status();
    return resolved.ok() ? *resolved : spec;
  }

  std::vector<pnn::v1::SegmentTask> Plan(const pnn::v1::JobSpec& spec) {
    auto tasks = PlanSegmentTasks(spec, data_.input_width(), data_.num_classes,
                                  "pipeline-job");
    EXPECT_TRUE(tasks.ok()) << tasks.status();
    if (!tasks.ok()) return {};
    // The scheduler fills the addresses in; in-process they only have to
    // be there for the stages that have a next one.
    for (size_t i = 0; i + 1 < tasks->size(); ++i) {
      (*tasks)[i].mutable_pipeline()->set_downstream_address("in-process");
    }
    return *tasks;
  }

  Dataset data_;
};

// Runs the whole pipeline in this thread; the stages' checkpoints (epoch,
// batch) are collected per stage.
struct PipelineRun {
  std::vector<pnn::v1::SegmentResult> results;
  std::vector<std::vector<std::pair<int, int64_t>>> checkpoints;
};

PipelineRun RunPipeline(const std::vector<pnn::v1::SegmentTask>& tasks,
                        const Dataset& data) {
  PipelineRun run;
  run.checkpoints.resize(tasks.size());
  std::vector<std::unique_ptr<PipelineStageTrainer>> stages(tasks.size());
  for (size_t i = 1; i < tasks.size(); ++i) {
    TrainOptions options;
    options.on_checkpoint = [&run, i](pnn::v1::Checkpoint checkpoint) {
      EXPECT_TRUE(checkpoint.has_weights());
      run.checkpoints[i].emplace_back(checkpoint.epoch(),
                                      checkpoint.batches_done());
    };
    auto stage = PipelineStageTrainer::Create(tasks[i], options);
    EXPECT_TRUE(stage.ok()) << stage.status();
    if (!stage.ok()) return run;
    stages[i] = *std::move(stage);
  }
  // Stage i's downstream is stage i + 1's Step, recursively.
  std::vector<DownstreamLoss> downstream(tasks.size() + 1);
  for (size_t i = tasks.size() - 1; i >= 1; --i) {
    PipelineStageTrainer* stage = stages[i].get();
    const DownstreamLoss next = downstream[i + 1];
    downstream[i] = [stage, next](const at::Tensor& output,
                                  const at::Tensor& labels,
                                  const BatchPosition& position) {
      return stage->Step(output, labels, position, next);
    };
  }
  TrainOptions first;
  first.remote_loss = downstream[1];
  first.on_checkpoint = [&run](pnn::v1::Checkpoint checkpoint) {
    run.checkpoints[0].emplace_back(checkpoint.epoch(),
                                    checkpoint.batches_done());
  };
  auto result = TrainSegment(tasks[0], data, first);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return run;
  run.results.push_back(*result);
  for (size_t i = 1; i < tasks.size(); ++i) {
    auto finished = stages[i]->Finish();
    EXPECT_TRUE(finished.ok()) << finished.status();
    if (!finished.ok()) return run;
    run.results.push_back(*finished);
  }
  return run;
}

class PipelineEqualsConventionalTest
    : public PipelineTest,
      public ::testing::WithParamInterface<std::vector<int>> {};

TEST_P(PipelineEqualsConventionalTest, SameWeightsAsTrainingTheWholeNetwork) {
  const pnn::v1::JobSpec spec = Spec(GetParam(), /*epochs=*/3);
  const auto tasks = Plan(spec);
  ASSERT_EQ(tasks.size(), GetParam().size() + 1);
  const PipelineRun run = RunPipeline(tasks, data_);
  ASSERT_EQ(run.results.size(), tasks.size());

  std::vector<int> widths = {data_.input_width(), 32, 24, 16,
                             data_.num_classes};
  MlpSegment whole(1, widths, spec.model().activation());
  InitializeWeights(whole, spec.seed());
  auto conventional =
      TrainNetwork(whole, data_.train, spec.training(), spec.seed(), {});
  ASSERT_TRUE(conventional.ok()) << conventional.status();

  std::vector<pnn::v1::SegmentWeights> weights;
  for (const auto& result : run.results) weights.push_back(result.weights());
  auto joined = AssembleNetwork(weights, spec.model().activation());
  ASSERT_TRUE(joined.ok()) << joined.status();
  const auto expected = whole->named_parameters();
  const auto actual = (*joined)->named_parameters();
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& parameter : expected) {
    const at::Tensor* mine = actual.find(parameter.key());
    ASSERT_NE(mine, nullptr) << parameter.key();
    EXPECT_TRUE(at::allclose(*mine, parameter.value(), /*rtol=*/1e-5,
                             /*atol=*/1e-6))
        << parameter.key() << " differs by up to "
        << (*mine - parameter.value()).abs().max().item<double>();
  }
  // Every stage reports the pipeline's loss, the whole network's loss.
  for (const auto& result : run.results) {
    ASSERT_EQ(result.epochs_size(), 3);
    for (int e = 0; e < 3; ++e) {
      EXPECT_NEAR(result.epochs(e).train_loss(),
                  conventional->epochs[e].train_loss(), 1e-5);
    }
    EXPECT_GT(result.cost().parameter_bytes(), 0);
    EXPECT_GT(result.cost().wall_seconds(), 0);
    EXPECT_GT(result.cost().samples_per_second(), 0);
  }
  // Training actually happened: the loss fell.
  EXPECT_LT(run.results.back().epochs(2).train_loss(),
            run.results.back().epochs(0).train_loss());
  // The stages checkpoint the same batches (3 per epoch, the last at the
  // epoch's end), so the coordinator can join them.
  const std::vector<std::pair<int, int64_t>> points = {
      {1, 11}, {1, 22}, {1, 32}, {2, 11}, {2, 22},
      {2, 32}, {3, 11}, {3, 22}, {3, 32}};
  for (const auto& stage_points : run.checkpoints) {
    EXPECT_EQ(stage_points, points);
  }
}

INSTANTIATE_TEST_SUITE_P(Cuts, PipelineEqualsConventionalTest,
                         ::testing::Values(std::vector<int>{2},
                                           std::vector<int>{1, 3}));

TEST_F(PipelineTest, RefusesTasksItCannotTrain) {
  auto tasks = Plan(Spec({2}, 1));
  ASSERT_EQ(tasks.size(), 2u);
  auto first = PipelineStageTrainer::Create(tasks[0], {});
  EXPECT_EQ(first.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(first.status().message()),
              HasSubstr("TrainSegment"));
  pnn::v1::SegmentTask no_pipeline = tasks[1];
  no_pipeline.clear_pipeline();
  EXPECT_EQ(PipelineStageTrainer::Create(no_pipeline, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  pnn::v1::SegmentTask unresolved = tasks[1];
  unresolved.mutable_training()->set_batch_size(0);
  EXPECT_EQ(PipelineStageTrainer::Create(unresolved, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PipelineTest, OutOfStepBatchesSpendTheStage) {
  auto tasks = Plan(Spec({2}, 1));
  auto stage = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(stage.ok()) << stage.status();
  const at::Tensor input = at::randn({8, 24});
  const at::Tensor labels = at::zeros({8}, at::kLong);
  BatchPosition position{/*epoch=*/1, /*batch=*/1, /*batches_per_epoch=*/2};
  auto step = (*stage)->Step(input, labels, position, nullptr);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->output_gradient.sizes().equals(input.sizes()));
  // Finishing mid-epoch is refused but does not spend the stage.
  EXPECT_EQ((*stage)->Finish().status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Batch 1 again (a replay): refused, and every later call fails too.
  auto replay = (*stage)->Step(input, labels, position, nullptr);
  EXPECT_EQ(replay.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(replay.status().message()),
              HasSubstr("out of step"));
  position.batch = 2;
  EXPECT_EQ((*stage)->Step(input, labels, position, nullptr).status(),
            replay.status());
  EXPECT_EQ((*stage)->Finish().status(), replay.status());
}

TEST_F(PipelineTest, NonFiniteLossIsDivergence) {
  auto tasks = Plan(Spec({2}, 1));
  auto stage = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(stage.ok()) << stage.status();
  const at::Tensor input =
      at::full({4, 24}, std::numeric_limits<float>::quiet_NaN());
  auto step = (*stage)->Step(input, at::zeros({4}, at::kLong),
                             BatchPosition{1, 1, 1}, nullptr);
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(step.status().message()), HasSubstr("diverged"));
}

TEST_F(PipelineTest, MiddleStagePassesTheDownstreamErrorOn) {
  auto tasks = Plan(Spec({1, 3}, 1));
  ASSERT_EQ(tasks.size(), 3u);
  auto middle = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(middle.ok()) << middle.status();
  EXPECT_FALSE((*middle)->is_last());
  auto step = (*middle)->Step(
      at::randn({4, 32}), at::zeros({4}, at::kLong), BatchPosition{1, 1, 5},
      [](const at::Tensor&, const at::Tensor&,
         const BatchPosition&) -> absl::StatusOr<RemoteLoss> {
        return absl::UnavailableError("next stage gone");
      });
  EXPECT_EQ(step.status(), absl::UnavailableError("next stage gone"));
  // A gradient of the wrong shape is refused.
  auto other = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(other.ok());
  auto bad = (*other)->Step(
      at::randn({4, 32}), at::zeros({4}, at::kLong), BatchPosition{1, 1, 5},
      [](const at::Tensor&, const at::Tensor&,
         const BatchPosition&) -> absl::StatusOr<RemoteLoss> {
        return RemoteLoss{at::zeros({3, 3}), 1.0};
      });
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace pnn
