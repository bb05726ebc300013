// Training on a CUDA device, for scripts/gpu-check (`ctest -L cuda`).
//
// Every test here needs a libtorch built with CUDA and a GPU; elsewhere
// (Debian's libtorch is CPU-only) each one reports SKIPPED, never a pass.
// The CPU side of the same behaviour is covered by trainer_test,
// coordinator_test and cluster_test.
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <string>
#include <vector>

#include "common/device_memory.h"
#include "common/job_spec.h"
#include "common/model.h"
#include "common/partition.h"
#include "common/precision.h"
#include "common/tensor_codec.h"
#include "common/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/architectures.h"
#include "tests/local_cluster.h"
#include "tests/small_job.h"

namespace pnn {
namespace {

constexpr char kNoCuda[] =
    "needs CUDA: this libtorch has none or no GPU is visible";

// The trainer tests' small job (tests/small_job.h) on "cuda".
class CudaTrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << kNoCuda;
    data_ = SmallJobData();
    auto resolved = SmallJobSpec("cuda");
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    spec_ = *resolved;
  }

  std::vector<pnn::v1::SegmentTask> Plan(const std::string& device,
                                         pnn::v1::Precision precision) {
    auto tasks = PlanSegmentTasks(spec_, data_.image_shape(), data_.num_classes,
                                  "cuda-test");
    EXPECT_TRUE(tasks.ok()) << tasks.status();
    if (!tasks.ok()) return {};
    for (auto& task : *tasks) {
      task.set_device(device);
      task.mutable_training()->set_precision(precision);
    }
    return *tasks;
  }

  // Trains both segments on `device` and returns the joined network's test
  // accuracy (evaluated on the CPU, as the coordinator does); the results
  // go to *results when given.
  double TrainAndJoin(const std::string& device, pnn::v1::Precision precision,
                      std::vector<pnn::v1::SegmentResult>* results = nullptr) {
    std::vector<pnn::v1::SegmentWeights> weights;
    for (const auto& task : Plan(device, precision)) {
      auto result = TrainSegment(task, data_, TrainOptions());
      EXPECT_TRUE(result.ok()) << result.status();
      if (!result.ok()) return 0;
      weights.push_back(result->weights());
      if (results != nullptr) results->push_back(*result);
    }
    auto network =
        NetworkArchitecture(spec_, data_.image_shape(), data_.num_classes);
    auto joined = AssembleNetwork(weights, *network);
    EXPECT_TRUE(joined.ok()) << joined.status();
    if (!joined.ok()) return 0;
    auto test = Evaluate(*joined, data_.test, data_.num_classes, "cpu");
    EXPECT_TRUE(test.ok()) << test.status();
    return test.ok() ? test->accuracy() : 0;
  }

  Dataset data_;
  pnn::v1::JobSpec spec_;
};

TEST_F(CudaTrainerTest, SegmentsTrainOnTheGpuAndJoinAsOnTheCpu) {
  EXPECT_TRUE(CanMeasureDeviceMemory());
  std::vector<pnn::v1::SegmentResult> results;
  const double gpu = TrainAndJoin("cuda", pnn::v1::PRECISION_FP32, &results);
  const double cpu = TrainAndJoin("cpu", pnn::v1::PRECISION_FP32);
  EXPECT_GT(gpu, 0.9);
  EXPECT_NEAR(gpu, cpu, 0.05);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& result : results) {
    const auto& cost = result.cost();
    EXPECT_GT(cost.device_peak_allocated_bytes(), 0);
    EXPECT_GE(cost.device_peak_reserved_bytes(),
              cost.device_peak_allocated_bytes());
    ASSERT_EQ(result.epochs_size(), 10);
    EXPECT_GT(result.epochs(9).device_peak_allocated_bytes(), 0);
    EXPECT_LT(result.epochs(9).train_loss(), result.epochs(0).train_loss());
  }
}

// Losses are read in batches on a GPU; progress must still come in order,
// at the interval, with finite means.
TEST_F(CudaTrainerTest, ProgressReportsComeAtTheirIntervalOnTheGpu) {
  auto tasks = Plan("cuda", pnn::v1::PRECISION_FP32);
  tasks[0].mutable_training()->set_epochs(1);
  std::vector<int64_t> reported;
  TrainOptions options;
  options.batch_report_interval = 8;
  options.on_batches = [&](int, int64_t done, int64_t per_epoch, double loss) {
    EXPECT_EQ(per_epoch, 32);
    EXPECT_TRUE(std::isfinite(loss));
    reported.push_back(done);
  };
  ASSERT_TRUE(TrainSegment(tasks[0], data_, options).ok());
  EXPECT_THAT(reported, ::testing::ElementsAre(8, 16, 24, 32));
}

// Same seed, same GPU: the same weights, including the SIL input noise
// drawn on the device (segment 2).
TEST_F(CudaTrainerTest, GpuTrainingRepeats) {
  const auto tasks = Plan("cuda", pnn::v1::PRECISION_FP32);
  auto a = TrainSegment(tasks[1], data_, TrainOptions());
  auto b = TrainSegment(tasks[1], data_, TrainOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  for (int i = 0; i < a->weights().tensors_size(); ++i) {
    auto x = TensorFromProto(a->weights().tensors(i));
    auto y = TensorFromProto(b->weights().tensors(i));
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_TRUE(at::allclose(*x, *y, 1e-5, 1e-6)) << i;
  }
}

TEST_F(CudaTrainerTest, Bf16AndTf32TrainAndLeaveAutocastOff) {
  EXPECT_GT(TrainAndJoin("cuda", pnn::v1::PRECISION_BF16), 0.85);
  EXPECT_GT(TrainAndJoin("cuda", pnn::v1::PRECISION_TF32), 0.9);
  EXPECT_FALSE(IsAutocastEnabled(c10::Device(c10::kCUDA)));
}

TEST_F(CudaTrainerTest, ConventionalTrainingAndEvaluationOnTheGpu) {
  auto architecture =
      NetworkArchitecture(spec_, data_.image_shape(), data_.num_classes);
  ASSERT_TRUE(architecture.ok());
  SegmentModel network(*architecture);
  InitializeWeights(network, 1);
  TrainOptions options;
  options.device = "cuda";
  auto trained =
      TrainNetwork(network, data_.train, spec_.training(), 1, options);
  ASSERT_TRUE(trained.ok()) << trained.status();
  EXPECT_GT(trained->cost.device_peak_allocated_bytes(), 0);
  auto on_gpu = Evaluate(network, data_.test, data_.num_classes, "cuda");
  auto on_cpu = Evaluate(network, data_.test, data_.num_classes, "cpu");
  ASSERT_TRUE(on_gpu.ok() && on_cpu.ok());
  EXPECT_GT(on_gpu->accuracy(), 0.9);
  EXPECT_NEAR(on_gpu->accuracy(), on_cpu->accuracy(), 2.0 / 512);
  EXPECT_NEAR(on_gpu->loss(), on_cpu->loss(), 1e-3);
}

// Dropout masks are drawn on the GPU from the layer's seed: the same for
// the same seed, different for another.
TEST(CudaModelTest, DropoutOnTheGpuIsSeeded) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << kNoCuda;
  auto forward = [](uint64_t seed) {
    SegmentModel model(SmallCnn());
    InitializeWeights(model, seed);
    model->to(at::kCUDA);
    model->train();
    at::manual_seed(99);  // the input; not the masks' stream
    const at::Tensor input = at::rand({16, 2 * 8 * 8}).to(at::kCUDA);
    return model->forward(input).to(at::kCPU);
  };
  EXPECT_TRUE(at::equal(forward(5), forward(5)));
  EXPECT_FALSE(at::equal(forward(5), forward(6)));
}

// A cuda job on a cluster whose coordinator is on the CPU: the segments
// train on the GPU workers, the coordinator joins and tests on its own
// device, and the job reports the workers' allocator peaks.
TEST(CudaClusterTest, CudaWorkersTrainAndTheCpuCoordinatorJoins) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << kNoCuda;
  LocalCluster cluster;
  ASSERT_TRUE(cluster.Start().ok());
  for (int i = 0; i < 2; ++i) {
    cluster.AddWorker(
        [](worker::WorkerOptions* options) { options->device = "cuda"; });
  }
  cluster.WaitForWorkers(2);
  auto request = LocalCluster::Request(6);
  request.mutable_spec()->set_device("cuda");
  const std::string id = cluster.Submit(request);
  grpc::Status status;
  cluster.Watch(id, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const pnn::v1::Job job = cluster.Get(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  EXPECT_GT(job.test().accuracy(), 0.9);
  ASSERT_EQ(job.segments_size(), 2);
  for (const auto& segment : job.segments()) {
    EXPECT_GT(segment.cost().device_peak_allocated_bytes(), 0);
  }
}

}  // namespace
}  // namespace pnn
