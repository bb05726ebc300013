#include "common/model_export.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/architectures.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

TEST(ModelExportTest, KeysAreThoseOfNnSequential) {
  const Architecture mlp = Mlp({784, 256, 256, 256, 256, 256, 10});
  EXPECT_EQ(*SequentialKey(mlp, "linear1.weight"), "0.weight");
  EXPECT_EQ(*SequentialKey(mlp, "linear1.bias"), "0.bias");
  EXPECT_EQ(*SequentialKey(mlp, "linear2.weight"), "2.weight");
  EXPECT_EQ(*SequentialKey(mlp, "linear6.bias"), "10.bias");
  for (const char* bad : {"linear0.weight", "linear1.scale", "linear.weight",
                          "conv1.weight", "linear1", "linear7.bias"}) {
    EXPECT_THAT(SequentialKey(mlp, bad).status().message(), HasSubstr(bad))
        << bad;
  }
}

// conv1 relu max_pool conv3 relu avg_pool dropout flatten linear7 relu
// linear8: the modules a PyTorch user lists, at the indices they get.
TEST(ModelExportTest, ConvolutionalNetworksExportAsTheirSequential) {
  const Architecture cnn = SmallCnn(/*channels=*/2, /*classes=*/3);
  EXPECT_EQ(*SequentialKey(cnn, "conv1.weight"), "0.weight");
  EXPECT_EQ(*SequentialKey(cnn, "conv3.bias"), "3.bias");
  EXPECT_EQ(*SequentialKey(cnn, "linear7.weight"), "8.weight");
  EXPECT_EQ(*SequentialKey(cnn, "linear8.bias"), "10.bias");
  EXPECT_FALSE(SequentialKey(cnn, "linear1.weight").ok());
  EXPECT_EQ(
      SequentialModulesJson(cnn),
      R"([{"type": "Conv2d", "in_channels": 2, "out_channels": 4, )"
      R"("kernel_size": 3, "stride": 1, "padding": 1}, {"type": "ReLU"}, )"
      R"({"type": "MaxPool2d", "kernel_size": 2, "stride": 2, "padding": 0}, )"
      R"({"type": "Conv2d", "in_channels": 4, "out_channels": 6, )"
      R"("kernel_size": 3, "stride": 1, "padding": 0}, {"type": "ReLU"}, )"
      R"({"type": "AvgPool2d", "kernel_size": 2, "stride": 1, "padding": 0}, )"
      R"({"type": "Dropout", "p": 0.25}, {"type": "Flatten"}, )"
      R"({"type": "Linear", "in_features": 6, "out_features": 12}, )"
      R"({"type": "ReLU"}, {"type": "Linear", "in_features": 12, )"
      R"("out_features": 3}])");
}

pnn::v1::SegmentWeights TwoLayers() {
  pnn::v1::SegmentWeights weights;
  const int shapes[2][2] = {{3, 4}, {2, 3}};
  for (int layer = 1; layer <= 2; ++layer) {
    const int out = shapes[layer - 1][0];
    const int in = shapes[layer - 1][1];
    auto* weight = weights.add_tensors();
    weight->set_name(absl::StrCat("linear", layer, ".weight"));
    weight->add_shape(out);
    weight->add_shape(in);
    weight->set_data(std::string(4 * out * in, '\1'));
    auto* bias = weights.add_tensors();
    bias->set_name(absl::StrCat("linear", layer, ".bias"));
    bias->add_shape(out);
    bias->set_data(std::string(4 * out, '\2'));
  }
  return weights;
}

ModelExportInfo Info() {
  ModelExportInfo info;
  info.job_id = "job-7";
  info.spec.set_name("small");
  info.spec.mutable_model()->set_activation(pnn::v1::ACTIVATION_TANH);
  info.spec.mutable_dataset()->set_path("fashion-mnist");
  info.spec.mutable_dataset()->set_test_limit(500);
  info.network = Mlp({4, 3, 2}, 1, pnn::v1::ACTIVATION_TANH);
  info.num_classes = 2;
  info.image_rows = 2;
  info.image_cols = 2;
  return info;
}

// The header of safetensors bytes, as JSON.
google::protobuf::Struct Header(const std::string& bytes) {
  uint64_t size = 0;
  for (int i = 0; i < 8; ++i) {
    size |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  }
  google::protobuf::Struct header;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(bytes.substr(8, size),
                                                          &header)
                  .ok());
  return header;
}

TEST(ModelExportTest, FileHasSequentialKeysAndTheMetadataToRunIt) {
  auto bytes = EncodeModelSafetensors(TwoLayers(), Info());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto decoded = DecodeSafetensors(*bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->tensors_size(), 4);
  EXPECT_EQ(decoded->tensors(0).name(), "0.weight");
  EXPECT_EQ(decoded->tensors(1).name(), "0.bias");
  EXPECT_EQ(decoded->tensors(2).name(), "2.weight");
  EXPECT_EQ(decoded->tensors(3).name(), "2.bias");
  EXPECT_EQ(decoded->tensors(2).data(), TwoLayers().tensors(2).data());

  const auto metadata = Header(*bytes).fields().at("__metadata__");
  const auto& fields = metadata.struct_value().fields();
  auto text = [&](const char* key) {
    EXPECT_TRUE(fields.count(key)) << key;
    return fields.count(key) ? fields.at(key).string_value() : "";
  };
  EXPECT_EQ(text("format"), "pt");
  EXPECT_EQ(text("pnn_format_version"), kModelFormatVersion);
  EXPECT_EQ(text("job_id"), "job-7");
  EXPECT_EQ(text("widths"), "4,3,2");
  EXPECT_EQ(text("input_shape"), "4");
  EXPECT_EQ(text("modules"),
            R"([{"type": "Linear", "in_features": 4, "out_features": 3}, )"
            R"({"type": "Tanh"}, {"type": "Linear", "in_features": 3, )"
            R"("out_features": 2}])");
  EXPECT_EQ(text("activation"), "tanh");
  EXPECT_EQ(text("num_classes"), "2");
  EXPECT_EQ(text("input_transpose"), "false");
  EXPECT_THAT(text("input_scaling"), HasSubstr("/ 255"));
  EXPECT_EQ(text("dataset"), "fashion-mnist");
  EXPECT_EQ(text("test_limit"), "500");
  pnn::v1::JobSpec spec;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(text("job_spec"), &spec)
          .ok());
  EXPECT_EQ(spec.name(), "small");
  EXPECT_EQ(spec.dataset().test_limit(), 500);
  // Every metadata value is a string (the safetensors rule).
  for (const auto& [key, value] : fields) {
    EXPECT_EQ(value.kind_case(), google::protobuf::Value::kStringValue) << key;
  }
}

TEST(ModelExportTest, AForeignTensorNameIsAnError) {
  pnn::v1::SegmentWeights weights = TwoLayers();
  weights.mutable_tensors(1)->set_name("head.bias");
  EXPECT_THAT(EncodeModelSafetensors(weights, Info()).status().message(),
              HasSubstr("head.bias"));
}

}  // namespace
}  // namespace pnn
