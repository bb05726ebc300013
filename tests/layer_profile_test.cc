// Layer-by-layer timing for cuts balanced by measured time.
#include "common/layer_profile.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/architectures.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

pnn::v1::TrainingConfig Training(int batch_size = 128) {
  pnn::v1::TrainingConfig training;
  training.set_epochs(1);
  training.set_batch_size(batch_size);
  training.set_learning_rate(1e-3f);
  training.set_optimizer(pnn::v1::OPTIMIZER_ADAM);
  training.set_precision(pnn::v1::PRECISION_FP32);
  return training;
}

// 64 -> 1024 -> 1024 -> 4: the middle layer does 16x the first's work and
// 256x the last's; the times must say so (ratios this large survive a
// noisy machine).
TEST(LayerProfileTest, OneTimePerLayerAndTheHeavyLayerIsSlowest) {
  auto seconds = ProfileLayers(Mlp({64, 1024, 1024, 4}), Training(), 3, "cpu");
  ASSERT_TRUE(seconds.ok()) << seconds.status();
  ASSERT_EQ(seconds->size(), 3u);
  for (double layer : *seconds) EXPECT_GT(layer, 0);
  EXPECT_GT((*seconds)[1], (*seconds)[0]);
  EXPECT_GT((*seconds)[1], (*seconds)[2]);
}

// Every kind of layer times alone, parameter-free ones included (a pooling
// layer after the first still backpropagates to its input).
TEST(LayerProfileTest, ConvolutionalNetworksTimeEveryLayer) {
  auto seconds = ProfileLayers(SmallCnn(), Training(16), 1, "cpu");
  ASSERT_TRUE(seconds.ok()) << seconds.status();
  EXPECT_EQ(seconds->size(), SmallCnn().layers.size());
}

TEST(LayerProfileTest, BadRequestsAreRefusedWithTheReason) {
  EXPECT_THAT(
      std::string(
          ProfileLayers(Mlp({8, 4}), Training(), 0, "cpu").status().message()),
      HasSubstr("profile batches must be in [1, 50]"));
  pnn::v1::TrainingConfig tf32 = Training();
  tf32.set_precision(pnn::v1::PRECISION_TF32);
  EXPECT_EQ(ProfileLayers(Mlp({8, 4}), tf32, 1, "cpu").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ProfileLayers(Mlp({8, 4}), Training(), 1, "tpu").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pnn
