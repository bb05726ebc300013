// PipelineStageTrainer: a model-parallel pipeline run in-process (the first
// stage through TrainSegment with a pipeline peer, later stages as
// PipelineStageTrainer) must be conventional end-to-end training: bit for
// bit with one micro-batch per batch, and up to the order of floating-point
// sums with several (GPipe and 1F1B).
#include "common/pipeline.h"

#include <ATen/ATen.h>

#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/job_spec.h"
#include "common/model.h"
#include "common/partition.h"
#include "common/pipeline_schedule.h"
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

  pnn::v1::JobSpec Spec(
      std::vector<int> cuts, int epochs, int micro_batches = 1,
      pnn::v1::PipelineSchedule schedule = pnn::v1::PIPELINE_SCHEDULE_GPIPE) {
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
    spec.mutable_pipeline()->set_micro_batches(micro_batches);
    spec.mutable_pipeline()->set_schedule(schedule);
    auto resolved = ResolveJobSpec(spec);
    EXPECT_TRUE(resolved.ok()) << resolved.status();
    return resolved.ok() ? *resolved : spec;
  }

  std::vector<pnn::v1::SegmentTask> Plan(const pnn::v1::JobSpec& spec) {
    auto tasks = PlanSegmentTasks(spec, data_.image_shape(), data_.num_classes,
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

// The stage after a peer, in the same thread: a micro-batch sent is run
// forward there at once, and receiving its gradient runs it backward.
class InProcessPeer final : public PipelinePeer {
 public:
  InProcessPeer(PipelineStageTrainer* stage, PipelinePeer* next)
      : stage_(stage), next_(next) {}
  absl::Status Send(const at::Tensor& output, const at::Tensor& labels,
                    const BatchPosition& position) override {
    return stage_->Forward(output, labels, position, next_);
  }
  absl::StatusOr<RemoteLoss> Receive(int micro) override {
    return stage_->Backward(micro, next_);
  }

 private:
  PipelineStageTrainer* const stage_;
  PipelinePeer* const next_;
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
  // peers[i] is stage i, seen from stage i - 1.
  std::vector<std::unique_ptr<InProcessPeer>> peers(tasks.size() + 1);
  for (size_t i = tasks.size() - 1; i >= 1; --i) {
    peers[i] =
        std::make_unique<InProcessPeer>(stages[i].get(), peers[i + 1].get());
  }
  TrainOptions first;
  first.pipeline_peer = peers[1].get();
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

struct PipelineCase {
  std::vector<int> cuts;
  int micro_batches;
  pnn::v1::PipelineSchedule schedule;
  // A convolutional network instead of 36-32-24-16-4: conv 4 k3 p1,
  // max_pool 2, flatten, linear 16, linear 4 on the 1x6x6 images, so that
  // 4-D activations cross the cuts.
  bool cnn = false;
};

// `spec` (resolved) with the small CNN cut at `cuts`, resolved again.
void UseSmallCnn(const std::vector<int>& cuts, pnn::v1::JobSpec* spec) {
  pnn::v1::ModelSpec* model = spec->mutable_model();
  model->mutable_cut_after_layers()->Assign(cuts.begin(), cuts.end());
  model->clear_hidden_widths();
  model->clear_layers();
  auto* conv = model->add_layers()->mutable_conv2d();
  conv->set_out_channels(4);
  conv->set_kernel(3);
  conv->set_stride(1);
  conv->set_padding(1);
  model->add_layers()->mutable_max_pool()->set_kernel(2);
  model->mutable_layers(1)->mutable_max_pool()->set_stride(2);
  model->add_layers()->mutable_flatten();
  model->add_layers()->mutable_linear()->set_out_features(16);
  model->add_layers()->mutable_linear()->set_out_features(0);
  auto resolved = ResolveJobSpec(*spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  *spec = *resolved;
}

class PipelineEqualsConventionalTest
    : public PipelineTest,
      public ::testing::WithParamInterface<PipelineCase> {};

TEST_P(PipelineEqualsConventionalTest, SameWeightsAsTrainingTheWholeNetwork) {
  const PipelineCase& setting = GetParam();
  pnn::v1::JobSpec spec =
      Spec(setting.cnn ? std::vector<int>{1} : setting.cuts, /*epochs=*/3,
           setting.micro_batches, setting.schedule);
  if (setting.cnn) UseSmallCnn(setting.cuts, &spec);
  const auto tasks = Plan(spec);
  ASSERT_EQ(tasks.size(), setting.cuts.size() + 1);
  const PipelineRun run = RunPipeline(tasks, data_);
  ASSERT_EQ(run.results.size(), tasks.size());

  const auto network =
      NetworkArchitecture(spec, data_.image_shape(), data_.num_classes);
  ASSERT_TRUE(network.ok()) << network.status();
  SegmentModel whole(*network);
  InitializeWeights(whole, spec.seed());
  auto conventional =
      TrainNetwork(whole, data_.train, spec.training(), spec.seed(), {});
  ASSERT_TRUE(conventional.ok()) << conventional.status();

  std::vector<pnn::v1::SegmentWeights> weights;
  for (const auto& result : run.results) weights.push_back(result.weights());
  auto joined = AssembleNetwork(weights, *network);
  ASSERT_TRUE(joined.ok()) << joined.status();
  const auto expected = whole->named_parameters();
  const auto actual = (*joined)->named_parameters();
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& parameter : expected) {
    const at::Tensor* mine = actual.find(parameter.key());
    ASSERT_NE(mine, nullptr) << parameter.key();
    // One micro-batch: the very same operations. Several: the batch's
    // gradient is a sum over micro-batches, in another order.
    if (setting.micro_batches == 1) {
      EXPECT_TRUE(at::equal(*mine, parameter.value()))
          << parameter.key() << " differs by up to "
          << (*mine - parameter.value()).abs().max().item<double>();
    } else {
      EXPECT_TRUE(at::allclose(*mine, parameter.value(), /*rtol=*/1e-4,
                               /*atol=*/1e-5))
          << parameter.key() << " differs by up to "
          << (*mine - parameter.value()).abs().max().item<double>();
    }
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
    EXPECT_GE(result.cost().idle_fraction(), 0);
    EXPECT_LT(result.cost().idle_fraction(), 1);
  }
  // What each stage keeps under its schedule (batches of 32 rows).
  for (size_t i = 0; i < run.results.size(); ++i) {
    const int kept =
        MicroBatchesKept(setting.schedule, static_cast<int>(i),
                         static_cast<int>(tasks.size()), setting.micro_batches);
    EXPECT_EQ(run.results[i].cost().micro_batches_kept(), kept);
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

INSTANTIATE_TEST_SUITE_P(
    Cuts, PipelineEqualsConventionalTest,
    ::testing::Values(PipelineCase{{2}, 1, pnn::v1::PIPELINE_SCHEDULE_GPIPE},
                      PipelineCase{{1, 3}, 1, pnn::v1::PIPELINE_SCHEDULE_GPIPE},
                      // 32-row batches in 5 micro-batches (7, 7, 6, 6, 6 rows);
                      // the epoch's last batch has 8 rows.
                      PipelineCase{{2}, 5, pnn::v1::PIPELINE_SCHEDULE_GPIPE},
                      PipelineCase{{2}, 4, pnn::v1::PIPELINE_SCHEDULE_1F1B},
                      PipelineCase{{1, 3}, 8, pnn::v1::PIPELINE_SCHEDULE_1F1B},
                      // More micro-batches than the short last batch has rows.
                      PipelineCase{
                          {1, 3}, 12, pnn::v1::PIPELINE_SCHEDULE_GPIPE},
                      // Cuts after the convolution (4x6x6, before its ReLU),
                      // after the pooling (4x3x3) and after linear 16.
                      PipelineCase{{1}, 1, pnn::v1::PIPELINE_SCHEDULE_GPIPE,
                                   /*cnn=*/true},
                      PipelineCase{{2, 4}, 4, pnn::v1::PIPELINE_SCHEDULE_1F1B,
                                   /*cnn=*/true}),
    // Stable names for ctest (the default prints the case's bytes).
    [](const ::testing::TestParamInfo<PipelineCase>& info) {
      std::string name = "Cut";
      for (int cut : info.param.cuts) name += std::to_string(cut);
      return std::string(info.param.cnn ? "Cnn" : "") + name + "M" +
             std::to_string(info.param.micro_batches) +
             (info.param.schedule == pnn::v1::PIPELINE_SCHEDULE_1F1B
                  ? "OneFOneB"
                  : "GPipe");
    });

TEST_F(PipelineTest, MicroBatchesOutOfStepSpendTheStage) {
  auto tasks = Plan(Spec({2}, 1, 2));
  auto stage = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(stage.ok()) << stage.status();
  const at::Tensor input = at::randn({4, 24});
  const at::Tensor labels = at::zeros({4}, at::kLong);
  BatchPosition position{/*epoch=*/1, /*batch=*/1, /*batches_per_epoch=*/2};
  position.micro_batches = 2;
  position.batch_rows = 8;
  ASSERT_TRUE((*stage)->Forward(input, labels, position, nullptr).ok());
  // Backward of a micro-batch that never ran forward.
  EXPECT_EQ((*stage)->Backward(1, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto other = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->Forward(input, labels, position, nullptr).ok());
  // The same micro-batch twice.
  const absl::Status twice =
      (*other)->Forward(input, labels, position, nullptr);
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(twice.message()), HasSubstr("out of step"));
}

TEST_F(PipelineTest, MicroBatchLossesSumToTheBatchMean) {
  auto tasks = Plan(Spec({2}, 1, 2));
  auto split = PipelineStageTrainer::Create(tasks[1], {});
  auto whole = PipelineStageTrainer::Create(tasks[1], {});
  ASSERT_TRUE(split.ok() && whole.ok());
  const at::Tensor input = at::randn({6, 24});
  const at::Tensor labels = at::tensor({0, 1, 2, 3, 0, 1}, at::kLong);
  auto one = (*whole)->Step(input, labels, BatchPosition{1, 1, 2}, nullptr);
  ASSERT_TRUE(one.ok()) << one.status();
  BatchPosition position{1, 1, 2};
  position.micro_batches = 2;
  position.batch_rows = 6;
  double loss = 0;
  std::vector<at::Tensor> gradients;
  for (int micro = 0; micro < 2; ++micro) {
    position.micro = micro;
    // 4 rows, then 2: unequal micro-batches weigh by their rows.
    const int64_t begin = micro == 0 ? 0 : 4;
    const int64_t end = micro == 0 ? 4 : 6;
    ASSERT_TRUE((*split)
                    ->Forward(input.slice(0, begin, end),
                              labels.slice(0, begin, end), position, nullptr)
                    .ok());
  }
  for (int micro = 0; micro < 2; ++micro) {
    auto step = (*split)->Backward(micro, nullptr);
    ASSERT_TRUE(step.ok()) << step.status();
    loss += step->loss;
    gradients.push_back(step->output_gradient);
  }
  EXPECT_NEAR(loss, one->loss, 1e-6);
  EXPECT_TRUE(at::allclose(at::cat(gradients), one->output_gradient,
                           /*rtol=*/1e-5, /*atol=*/1e-7));
}

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
