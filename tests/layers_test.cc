// Layer lists (ModelSpec.layers): what a submission is told about a
// malformed list, the shapes and costs pnn infers, and the cuts.
#include "common/layers.h"

#include <string>
#include <vector>

#include "common/accounting.h"
#include "common/auto_cut.h"
#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/architectures.h"

namespace pnn {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr ImageShape kFashion{1, 28, 28};

// The layers of examples/fashion_mnist_cnn.json, as JSON.
constexpr char kCnnLayers[] = R"([
  {"conv2d": {"out_channels": 32, "kernel": 3, "padding": 1}},
  {"max_pool": {"kernel": 2}},
  {"conv2d": {"out_channels": 64, "kernel": 3, "padding": 1}},
  {"max_pool": {"kernel": 2}},
  {"flatten": {}},
  {"linear": {"out_features": 128}},
  {"linear": {}}])";

absl::StatusOr<pnn::v1::JobSpec> Resolve(const std::string& model_json,
                                         const std::string& extra = "") {
  auto spec =
      ParseJobSpecJson(absl::StrCat(R"({"model": )", model_json, extra, "}"));
  if (!spec.ok()) return spec.status();
  return ResolveJobSpec(*spec);
}

TEST(LayersTest, TheExampleCnnResolvesAndInfersItsShapes) {
  auto spec = Resolve(absl::StrCat(R"({"layers": )", kCnnLayers,
                                   R"(, "cut_after_layers": [6]})"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  // Defaults: strides (1 for a convolution, the kernel for pooling).
  EXPECT_EQ(spec->model().layers(0).conv2d().stride(), 1);
  EXPECT_EQ(spec->model().layers(1).max_pool().stride(), 2);
  EXPECT_TRUE(spec->model().hidden_widths().empty());
  ASSERT_TRUE(ValidateAgainstData(*spec, kFashion, 10).ok());
  auto network = NetworkArchitecture(*spec, kFashion, 10);
  ASSERT_TRUE(network.ok()) << network.status();
  EXPECT_THAT(network->input_shape, ElementsAre(1, 28, 28));
  EXPECT_EQ(network->layers.back().linear().out_features(), 10);
  auto shapes = InferShapes(*network);
  ASSERT_TRUE(shapes.ok());
  EXPECT_THAT((*shapes)[0].output, ElementsAre(32, 28, 28));
  EXPECT_THAT((*shapes)[1].output, ElementsAre(32, 14, 14));
  EXPECT_THAT((*shapes)[3].output, ElementsAre(64, 7, 7));
  EXPECT_THAT((*shapes)[4].output, ElementsAre(3136));
  EXPECT_THAT((*shapes)[6].output, ElementsAre(10));
  // Parameters and multiply-adds, as PyTorch counts them.
  EXPECT_EQ((*shapes)[0].parameters, 32 * 9 + 32);
  EXPECT_EQ((*shapes)[2].parameters, 64 * 32 * 9 + 64);
  EXPECT_EQ((*shapes)[2].forward_flops, 2LL * 32 * 9 * 64 * 14 * 14);
  EXPECT_EQ((*shapes)[5].parameters, 3136 * 128 + 128);
  EXPECT_EQ((*shapes)[1].forward_flops, 0);
}

TEST(LayersTest, CutsFallBeforeTheActivationOfAWeightedLayer) {
  auto spec = Resolve(absl::StrCat(R"({"layers": )", kCnnLayers,
                                   R"(, "cut_after_layers": [1, 4, 6]})"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto network = NetworkArchitecture(*spec, kFashion, 10);
  ASSERT_TRUE(network.ok());
  auto segments = CutNetwork(*spec, *network);
  ASSERT_TRUE(segments.ok());
  ASSERT_EQ(segments->size(), 4u);
  // After the first convolution: the next segment starts with its ReLU.
  EXPECT_THAT((*segments)[1].architecture.input_shape, ElementsAre(32, 28, 28));
  EXPECT_TRUE((*segments)[1].architecture.leading_activation);
  // After a pooling layer: the ReLU ran before it.
  EXPECT_THAT((*segments)[2].architecture.input_shape, ElementsAre(64, 7, 7));
  EXPECT_FALSE((*segments)[2].architecture.leading_activation);
  EXPECT_THAT((*segments)[3].architecture.input_shape, ElementsAre(128));
  EXPECT_TRUE((*segments)[3].architecture.leading_activation);
}

TEST(LayersTest, MalformedLayerListsNameTheLayer) {
  struct Case {
    std::string model;
    std::string message;
  };
  const std::vector<Case> cases = {
      {R"({"layers": [{"linear": {"out_features": 8}}, {"linear": {}}],
           "cut_after_layers": [1]})",
       "model.layers[0]: linear needs a flat input; add a flatten layer"},
      {R"({"layers": [{"flatten": {}}, {}, {"linear": {}}],
           "cut_after_layers": [1]})",
       "model.layers[1]: the layer has no kind"},
      {R"({"layers": [{"conv2d": {"out_channels": 0, "kernel": 3}},
           {"flatten": {}}, {"linear": {}}], "cut_after_layers": [1]})",
       "model.layers[0]: conv2d.out_channels must be in [1, 65536], got 0"},
      {R"({"layers": [{"conv2d": {"out_channels": 4, "kernel": 3,
           "padding": 3}}, {"flatten": {}}, {"linear": {}}],
           "cut_after_layers": [1]})",
       "model.layers[0]: conv2d.padding must be in [0, 2], got 3"},
      {R"({"layers": [{"max_pool": {"kernel": 2, "padding": 2}},
           {"flatten": {}}, {"linear": {}}], "cut_after_layers": [1]})",
       "model.layers[0]: max_pool.padding must be in [0, 1], got 2"},
      {R"({"layers": [{"flatten": {}}, {"max_pool": {"kernel": 2}},
           {"linear": {}}], "cut_after_layers": [1]})",
       "model.layers[1]: max_pool needs an image input, but a flatten layer "
       "came before it"},
      {R"({"layers": [{"flatten": {}}, {"dropout": {"p": 1}},
           {"linear": {}}], "cut_after_layers": [1]})",
       "model.layers[1]: dropout.p must be in [0, 1), got 1"},
      {R"({"layers": [{"flatten": {}}, {"linear": {"out_features": 8}},
           {"dropout": {"p": 0.5}}], "cut_after_layers": [1]})",
       "model.layers[2]: the last layer must be linear"},
      {R"({"layers": [{"flatten": {}}, {"linear": {}}],
           "cut_after_layers": [2]})",
       "model.cut_after_layers[0]: cut points must be strictly increasing and "
       "between 1 and 1 (the network has 2 layers), got 2"},
      {R"({"layers": [{"flatten": {}}, {"linear": {}}]})",
       "model.cut_after_layers: a layer list has no default cut"},
      {R"({"layers": [{"conv2d": {"out_channels": 2, "kernel": 3}},
           {"max_pool": {"kernel": 2}}, {"flatten": {}}, {"linear": {}}],
           "cut_after_layers": [1, 3]})",
       "model.cut_after_layers: segment 2 (layers 2..3) has no conv2d or "
       "linear layer to train"},
      {R"({"layers": [{"flatten": {}}, {"linear": {}}],
           "hidden_widths": [8], "cut_after_layers": [1]})",
       "model: give hidden_widths (a fully connected network) or layers"},
  };
  for (const Case& c : cases) {
    auto spec = Resolve(c.model);
    ASSERT_FALSE(spec.ok()) << c.model;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr(c.message))
        << c.model;
  }
}

TEST(LayersTest, LayersThatDoNotFitTheImagesAreRefusedWithTheirShape) {
  auto spec = Resolve(R"({"layers": [
      {"conv2d": {"out_channels": 4, "kernel": 3}},
      {"max_pool": {"kernel": 2}},
      {"conv2d": {"out_channels": 4, "kernel": 5}},
      {"flatten": {}}, {"linear": {}}], "cut_after_layers": [4]})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  // 10x10 -> conv 3 -> 8x8 -> pool 2 -> 4x4: a 5x5 kernel does not fit.
  const absl::Status status = ValidateAgainstData(*spec, {1, 10, 10}, 3);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("model.layers[2]: kernel 5 is larger than the 4x4 "
                        "input"));
  EXPECT_TRUE(ValidateAgainstData(*spec, {1, 12, 12}, 3).ok());

  auto wrong_classes = Resolve(R"({"layers": [{"flatten": {}},
      {"linear": {"out_features": 8}}, {"linear": {"out_features": 7}}],
      "cut_after_layers": [2]})");
  ASSERT_TRUE(wrong_classes.ok()) << wrong_classes.status();
  EXPECT_THAT(
      std::string(ValidateAgainstData(*wrong_classes, kFashion, 10).message()),
      HasSubstr("model.layers[2]: the last layer outputs the class "
                "scores: out_features must be 0 or 10, got 7"));
}

TEST(LayersTest, OrthogonalSilNeedsACutOfAtLeastAsManyElementsAsClasses) {
  auto spec = Resolve(
      R"({"layers": [{"conv2d": {"out_channels": 1, "kernel": 3}},
          {"max_pool": {"kernel": 4}}, {"flatten": {}}, {"linear": {}}],
          "cut_after_layers": [2]})",
      R"(, "sil": {"distribution": "SIL_DISTRIBUTION_ORTHOGONAL"})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  // 10x10 -> 8x8 -> 2x2: four elements for ten classes.
  EXPECT_THAT(
      std::string(ValidateAgainstData(*spec, {1, 10, 10}, 10).message()),
      HasSubstr("model.cut_after_layers[0]"));
  EXPECT_TRUE(ValidateAgainstData(*spec, {1, 10, 10}, 4).ok());
}

// The analytic cost of a fully connected chain is what it always was.
TEST(LayersTest, TrainingCostCountsConvolutionsAndKeepsTheMlpFigures) {
  pnn::v1::TrainingConfig adam;
  adam.set_batch_size(10);
  adam.set_optimizer(pnn::v1::OPTIMIZER_ADAM);
  const auto mlp = AnalyticTrainingCost(Mlp({784, 256, 10}), adam);
  EXPECT_EQ(mlp.parameter_count(), 784 * 256 + 256 + 256 * 10 + 10);
  EXPECT_EQ(mlp.forward_flops_per_sample(), 2 * (784 * 256 + 256 * 10));
  // Input, linear output, its ReLU, the last output: per row.
  EXPECT_EQ(mlp.activation_bytes(), 4 * 10 * (784 + 256 + 256 + 10));
  EXPECT_EQ(mlp.optimizer_state_bytes(), 2 * mlp.parameter_bytes());

  const auto cnn = AnalyticTrainingCost(SmallCnn(2, 3), adam);
  // conv1 2->4 k3 on 8x8, conv3 4->6 k3 on 4x4 (2x2 out), avg_pool to
  // 1x1, linear 6->12, linear 12->3.
  EXPECT_EQ(cnn.parameter_count(),
            (4 * 2 * 9 + 4) + (6 * 4 * 9 + 6) + (6 * 12 + 12) + (12 * 3 + 3));
  EXPECT_EQ(cnn.forward_flops_per_sample(),
            2 * (2 * 9 * 4 * 64 + 4 * 9 * 6 * 4 + 6 * 12 + 12 * 3));
}

TEST(LayersTest, AutoCutBalancesALayerList) {
  auto spec = Resolve(absl::StrCat(R"({"layers": )", kCnnLayers, "}"),
                      R"(, "auto_cut": {"segments": 2})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto plan = ApplyAutoCut(&*spec, kFashion, 10);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->segments_size(), 2);
  // The second convolution holds most of the FLOPs: the lightest largest
  // segment ends with it (ties: the earliest cut).
  EXPECT_THAT(spec->model().cut_after_layers(), ElementsAre(3));
  EXPECT_GT(plan->segments(0).training_flops_per_sample(),
            plan->segments(1).training_flops_per_sample());
}

}  // namespace
}  // namespace pnn
