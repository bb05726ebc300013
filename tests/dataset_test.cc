#include "common/dataset.h"

#include <ATen/ATen.h>

#include <filesystem>

#include "common/dataset_cache.h"
#include "common/idx.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

void WriteArray(const std::string& path, std::vector<int32_t> dims,
                std::vector<uint8_t> data) {
  IdxArray array;
  array.dims = std::move(dims);
  array.data = std::move(data);
  ASSERT_TRUE(WriteIdxFile(path, array, /*gzip=*/true).ok());
}

// Writes an EMNIST-named split of 47 images, one per class, whose first
// image is a 2x3 ramp.
void WriteEmnist(const std::string& dir, const std::string& split) {
  std::vector<uint8_t> images(47 * 6, 0);
  for (uint8_t i = 0; i < 6; ++i) images[i] = i;
  std::vector<uint8_t> labels(47);
  for (uint8_t i = 0; i < 47; ++i) labels[i] = i;
  for (const char* part : {"train", "test"}) {
    WriteArray(dir + "/emnist-" + split + "-" + part + "-images-idx3-ubyte.gz",
               {47, 2, 3}, images);
    WriteArray(dir + "/emnist-" + split + "-" + part + "-labels-idx1-ubyte.gz",
               {47}, labels);
  }
}

TEST(DatasetTest, SyntheticRoundTripsThroughIdxFiles) {
  TempDir dir;
  SyntheticDatasetOptions options;
  const Dataset synthetic = MakeSyntheticDataset(options);
  ASSERT_TRUE(WriteDatasetAsIdx(synthetic, dir.path()).ok());
  pnn::v1::DatasetSpec spec;
  auto loaded = LoadDataset(dir.path(), spec);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->train.size(), options.train_samples);
  EXPECT_EQ(loaded->test.size(), options.test_samples);
  EXPECT_EQ(loaded->num_classes, options.num_classes);
  EXPECT_EQ(loaded->input_width(), options.rows * options.cols);
  EXPECT_TRUE(at::equal(loaded->train.labels, synthetic.train.labels));
  // Bytes quantise to 1/255.
  EXPECT_LE((loaded->train.images - synthetic.train.images).abs().max().item<float>(),
            0.5f / 255 + 1e-6f);

  spec.set_train_limit(100);
  spec.set_test_limit(7);
  auto limited = LoadDataset(dir.path(), spec);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->train.size(), 100);
  EXPECT_EQ(limited->test.size(), 7);
}

// Colour data sets converted to IDX: [N, channels, rows, cols] arrays,
// held as [N, channels * rows * cols] (each image channel-major), and the
// transposed orientation swaps rows and columns of every channel.
TEST(DatasetTest, FourDimensionalIdxImagesKeepTheirChannels) {
  TempDir dir;
  SyntheticDatasetOptions options;
  options.channels = 3;
  options.rows = 4;
  options.cols = 5;
  const Dataset synthetic = MakeSyntheticDataset(options);
  ASSERT_TRUE(WriteDatasetAsIdx(synthetic, dir.path()).ok());
  EXPECT_TRUE(std::filesystem::exists(dir.path() +
                                      "/train-images-idx4-ubyte.gz"));
  pnn::v1::DatasetSpec spec;
  auto loaded = LoadDataset(dir.path(), spec);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->channels, 3);
  EXPECT_EQ(loaded->rows, 4);
  EXPECT_EQ(loaded->cols, 5);
  EXPECT_EQ(loaded->input_width(), 60);
  EXPECT_LE((loaded->train.images - synthetic.train.images).abs().max().item<float>(),
            0.5f / 255 + 1e-6f);
  auto shape = ReadDatasetShape(dir.path(), spec);
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->channels, 3);
  EXPECT_EQ(shape->input_width(), 60);

  spec.set_orientation(pnn::v1::IMAGE_ORIENTATION_TRANSPOSED);
  auto transposed = LoadDataset(dir.path(), spec);
  ASSERT_TRUE(transposed.ok()) << transposed.status();
  EXPECT_EQ(transposed->rows, 5);
  EXPECT_EQ(transposed->cols, 4);
  EXPECT_TRUE(at::equal(
      transposed->train.images.reshape({-1, 3, 5, 4}),
      loaded->train.images.reshape({-1, 3, 4, 5}).transpose(2, 3)));
}

TEST(DatasetTest, LabelsOnlyLoadsTheLabelsAndTheShapeButNoImages) {
  TempDir dir;
  SyntheticDatasetOptions options;
  const Dataset synthetic = MakeSyntheticDataset(options);
  ASSERT_TRUE(WriteDatasetAsIdx(synthetic, dir.path()).ok());
  pnn::v1::DatasetSpec spec;
  spec.set_train_limit(100);
  auto labels = LoadDataset(dir.path(), spec, DatasetContent::kLabelsOnly);
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_FALSE(labels->train.images.defined());
  EXPECT_FALSE(labels->test.images.defined());
  EXPECT_EQ(labels->train.size(), 100);
  EXPECT_EQ(labels->input_width(), options.rows * options.cols);
  EXPECT_EQ(labels->num_classes, options.num_classes);
  EXPECT_TRUE(at::equal(labels->train.labels,
                        synthetic.train.labels.slice(0, 0, 100)));
  EXPECT_EQ(labels->memory_bytes(),
            labels->train.labels.nbytes() + labels->test.labels.nbytes());
}

TEST(DatasetCacheTest, LabelsOnlyRequestsReuseAWholeDataSet) {
  TempDir dir;
  ASSERT_TRUE(
      WriteDatasetAsIdx(MakeSyntheticDataset(SyntheticDatasetOptions()),
                        dir.path())
          .ok());
  pnn::v1::DatasetSpec spec;
  DatasetCache cache(2);
  auto labels = cache.Get(dir.path(), spec, DatasetContent::kLabelsOnly);
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_FALSE((*labels)->train.images.defined());
  // A whole request is not served by the labels-only entry...
  auto whole = cache.Get(dir.path(), spec);
  ASSERT_TRUE(whole.ok());
  EXPECT_TRUE((*whole)->train.images.defined());
  // ...but a labels-only request is served by the whole one.
  auto again = cache.Get(dir.path(), spec, DatasetContent::kLabelsOnly);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), whole->get());
}

TEST(DatasetTest, EmnistNamesAreFoundAndTransposed) {
  TempDir dir;
  WriteEmnist(dir.path(), "balanced");
  pnn::v1::DatasetSpec spec;
  spec.set_emnist_split("balanced");
  auto loaded = LoadDataset(dir.path(), spec);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->num_classes, 47);
  EXPECT_EQ(loaded->rows, 3);
  EXPECT_EQ(loaded->cols, 2);
  // Stored row-major as [[0,1,2],[3,4,5]]; transposed: [[0,3],[1,4],[2,5]].
  const at::Tensor first = loaded->train.images[0].mul(255).round();
  EXPECT_TRUE(at::equal(first, at::tensor({0.f, 3.f, 1.f, 4.f, 2.f, 5.f})));

  spec.set_orientation(pnn::v1::IMAGE_ORIENTATION_AS_STORED);
  auto stored = LoadDataset(dir.path(), spec);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->rows, 2);
  EXPECT_TRUE(at::equal(stored->train.images[0].mul(255).round(),
                        at::tensor({0.f, 1.f, 2.f, 3.f, 4.f, 5.f})));
}

TEST(DatasetTest, MissingFilesExplainWhatIsThere) {
  TempDir dir;
  WriteEmnist(dir.path(), "letters");
  WriteEmnist(dir.path(), "digits");
  auto located = LocateDataset(dir.path(), pnn::v1::DatasetSpec());
  ASSERT_FALSE(located.ok());
  const std::string message(located.status().message());
  EXPECT_THAT(message, HasSubstr("dataset.emnist_split"));
  EXPECT_THAT(message, HasSubstr("digits, letters"));

  pnn::v1::DatasetSpec wrong_split;
  wrong_split.set_emnist_split("byclass");
  located = LocateDataset(dir.path(), wrong_split);
  ASSERT_FALSE(located.ok());
  EXPECT_THAT(std::string(located.status().message()),
              HasSubstr("emnist-byclass-"));

  located = LocateDataset(dir.path() + "/nope", pnn::v1::DatasetSpec());
  EXPECT_EQ(located.status().code(), absl::StatusCode::kNotFound);
}

TEST(DatasetTest, InconsistentFilesAreRejected) {
  TempDir dir;
  const std::string d = dir.path();
  WriteArray(d + "/train-images-idx3-ubyte.gz", {2, 2, 2}, std::vector<uint8_t>(8));
  WriteArray(d + "/train-labels-idx1-ubyte.gz", {3}, {0, 1, 1});
  WriteArray(d + "/t10k-images-idx3-ubyte.gz", {1, 2, 2}, std::vector<uint8_t>(4));
  WriteArray(d + "/t10k-labels-idx1-ubyte.gz", {1}, {1});
  auto loaded = LoadDataset(d, pnn::v1::DatasetSpec());
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("3 labels"));

  WriteArray(d + "/train-labels-idx1-ubyte.gz", {2}, {0, 1});
  WriteArray(d + "/t10k-labels-idx1-ubyte.gz", {1}, {7});
  loaded = LoadDataset(d, pnn::v1::DatasetSpec());
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("label 7 never occurs"));

  WriteArray(d + "/t10k-labels-idx1-ubyte.gz", {1}, {1});
  WriteArray(d + "/t10k-images-idx3-ubyte.gz", {1, 1, 4}, std::vector<uint8_t>(4));
  loaded = LoadDataset(d, pnn::v1::DatasetSpec());
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("1x4"));

  // A labels file where images belong.
  WriteArray(d + "/t10k-images-idx3-ubyte.gz", {1}, {1});
  loaded = LoadDataset(d, pnn::v1::DatasetSpec());
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("3-dimensional"));
}

TEST(DatasetTest, AStrayLabelIsAnErrorNotAnotherClass) {
  // Fault: one label 200 among 0..3 made a 201-class data set.
  TempDir dir;
  const std::string d = dir.path();
  WriteArray(d + "/train-images-idx3-ubyte.gz", {5, 1, 1}, {1, 2, 3, 4, 5});
  WriteArray(d + "/train-labels-idx1-ubyte.gz", {5}, {0, 1, 2, 3, 200});
  WriteArray(d + "/t10k-images-idx3-ubyte.gz", {1, 1, 1}, {1});
  WriteArray(d + "/t10k-labels-idx1-ubyte.gz", {1}, {1});
  for (bool whole : {true, false}) {
    const absl::Status status =
        whole ? LoadDataset(d, pnn::v1::DatasetSpec()).status()
              : ReadDatasetShape(d, pnn::v1::DatasetSpec()).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("label 200 occurs 1 time(s) but classes 4..199"));
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("train-labels-idx1-ubyte.gz"));
  }
  // Classes 1..K without a class 0 (EMNIST "letters") are fine.
  WriteArray(d + "/train-labels-idx1-ubyte.gz", {5}, {1, 2, 3, 4, 4});
  auto letters = LoadDataset(d, pnn::v1::DatasetSpec());
  ASSERT_TRUE(letters.ok()) << letters.status();
  EXPECT_EQ(letters->num_classes, 5);
}

TEST(DatasetTest, DatasetPathsStayInsideTheDataRoot) {
  pnn::v1::DatasetSpec spec;
  spec.set_path("fashion-mnist");
  auto resolved = ResolveDatasetDirectory("/data", spec, false);
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(*resolved, "/data/fashion-mnist");
  spec.set_path("../etc");
  EXPECT_FALSE(ResolveDatasetDirectory("/data", spec, true).ok());
  spec.set_path("a/../../etc");
  EXPECT_FALSE(ResolveDatasetDirectory("/data", spec, true).ok());
  spec.set_path("/etc");
  EXPECT_FALSE(ResolveDatasetDirectory("/data", spec, false).ok());
  auto absolute = ResolveDatasetDirectory("/data", spec, true);
  ASSERT_TRUE(absolute.ok());
  EXPECT_EQ(*absolute, "/etc");
}

TEST(DatasetTest, LoadsDebianFashionMnist) {
  pnn::v1::DatasetSpec spec;
  spec.set_train_limit(1000);
  spec.set_test_limit(500);
  auto loaded = LoadDataset(kFashionMnistDir, spec);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->rows, 28);
  EXPECT_EQ(loaded->cols, 28);
  EXPECT_EQ(loaded->num_classes, 10);
  EXPECT_EQ(loaded->train.size(), 1000);
  EXPECT_GE(loaded->train.images.min().item<float>(), 0.0f);
  EXPECT_LE(loaded->train.images.max().item<float>(), 1.0f);
}

}  // namespace
}  // namespace pnn
