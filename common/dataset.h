// MNIST-family data sets (MNIST, Fashion-MNIST, EMNIST) loaded from IDX
// files into memory once per process, plus a small generated data set for
// fast tests.
#ifndef PNN_COMMON_DATASET_H_
#define PNN_COMMON_DATASET_H_

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// Where Debian's dataset-* packages install their files.
inline constexpr char kDefaultDataRoot[] = "/usr/share/datasets";

// Largest image (channels x rows x columns) a data set may have: far
// beyond the MNIST family, small enough that widths stay in int range.
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 24;

struct DatasetFiles {
  std::string train_images;
  std::string train_labels;
  std::string test_images;
  std::string test_labels;
  bool transpose = false;  // resolved orientation
};

// Finds the four IDX files of `spec` in `directory` (gzip or raw; MNIST
// names, or EMNIST's emnist-<split>-... names when spec.emnist_split is
// set). The error lists what the directory holds and how to fix the spec.
absl::StatusOr<DatasetFiles> LocateDataset(const std::string& directory,
                                           const pnn::v1::DatasetSpec& spec);

struct Split {
  // float32 [N, channels * rows * cols] (each image [channels, rows, cols]
  // row-major), values in [0, 1].
  at::Tensor images;
  at::Tensor labels;  // int64 [N]
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

struct Dataset {
  Split train;
  Split test;
  int channels = 1;
  int rows = 0;
  int cols = 0;
  int num_classes = 0;  // 1 + the largest label in either split
  std::string directory;

  int input_width() const { return channels * rows * cols; }
  ImageShape image_shape() const { return {channels, rows, cols}; }
  int64_t memory_bytes() const;
};

// What to load: a segment that trains on SIL reads only the labels, and
// reading and converting the images is most of a load's time and memory.
enum class DatasetContent { kAll, kLabelsOnly };

// Reads, validates and converts the files. Images are IDX arrays of
// unsigned bytes [N, rows, cols] (one channel) or [N, channels, rows,
// cols]. Checks that images and labels
// agree in count, that train and test images have the same size, and that
// every label is below 256 (IDX unsigned bytes) and test labels appear in
// the training classes. Applies spec.train_limit / test_limit. With
// kLabelsOnly the splits' images stay undefined (rows and cols are set).
absl::StatusOr<Dataset> LoadDataset(
    const std::string& directory, const pnn::v1::DatasetSpec& spec,
    DatasetContent content = DatasetContent::kAll);

// The shape of a data set read from the file headers and the label files
// only (milliseconds even for EMNIST): enough to validate a job against it
// without loading the images.
struct DatasetShape {
  int64_t train_samples = 0;
  int64_t test_samples = 0;
  int channels = 1;
  int rows = 0;
  int cols = 0;
  int num_classes = 0;
  int input_width() const { return channels * rows * cols; }
  ImageShape image_shape() const { return {channels, rows, cols}; }
};
absl::StatusOr<DatasetShape> ReadDatasetShape(
    const std::string& directory, const pnn::v1::DatasetSpec& spec);

// Resolves spec.path against `data_root` (an absolute spec path is used as
// is when `allow_absolute`, else rejected; ".." components are rejected).
absl::StatusOr<std::string> ResolveDatasetDirectory(
    const std::string& data_root, const pnn::v1::DatasetSpec& spec,
    bool allow_absolute);

// A learnable toy problem: every class is a fixed random prototype image,
// samples are prototypes plus noise. Deterministic in `seed`.
struct SyntheticDatasetOptions {
  int num_classes = 4;
  int64_t train_samples = 512;
  int64_t test_samples = 256;
  int channels = 1;
  int rows = 6;
  int cols = 6;
  float noise = 0.35f;
  uint64_t seed = 7;
};
Dataset MakeSyntheticDataset(const SyntheticDatasetOptions& options);

// Writes `dataset` as MNIST-named IDX files (gzip) into `directory`,
// quantised to bytes ([N, rows, cols], or [N, channels, rows, cols] for
// more than one channel); for tests of the file path and of the services.
absl::Status WriteDatasetAsIdx(const Dataset& dataset,
                               const std::string& directory);

}  // namespace pnn

#endif  // PNN_COMMON_DATASET_H_
