#include "common/dataset.h"

#include <array>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/idx.h"
#include "common/status_macros.h"

namespace pnn {
namespace {

// Labels must number the classes 0..K-1, each present in the training
// set (class 0 excepted): a stray label (200 among 0..9) would silently
// make a 201-class problem of mostly empty classes.
absl::Status CheckClassesNumbered(const uint8_t* labels, int64_t count,
                                  const std::string& path) {
  std::array<int64_t, 256> counts{};
  for (int64_t i = 0; i < count; ++i) ++counts[labels[i]];
  int largest = 0;
  for (int label = 0; label < 256; ++label) {
    if (counts[label] > 0) largest = label;
  }
  // Class 0 may be absent: EMNIST "letters" numbers its 26 classes 1..26.
  for (int label = 1; label < largest; ++label) {
    if (counts[label] > 0) continue;
    int last_missing = label;
    while (last_missing + 1 < largest && counts[last_missing + 1] == 0) {
      ++last_missing;
    }
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": label ", largest, " occurs ", counts[largest],
        " time(s) but ",
        label == last_missing ? absl::StrCat("class ", label)
                              : absl::StrCat("classes ", label, "..",
                                             last_missing),
        " never occur(s); labels must number the classes 0..K-1 (or "
        "1..K), each present in the training set (a corrupt or mixed-up "
        "label file?)"));
  }
  return absl::OkStatus();
}

namespace fs = std::filesystem;

// Returns the first of `names` (each tried raw and with .gz) that exists.
std::string FindFile(const fs::path& directory,
                     const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    for (const char* suffix : {".gz", ""}) {
      const fs::path candidate = directory / (name + suffix);
      std::error_code error;
      if (fs::is_regular_file(candidate, error)) return candidate.string();
    }
  }
  return "";
}

std::vector<std::string> ListIdxFiles(const fs::path& directory) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    if (absl::StrContains(name, "idx")) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::set<std::string> EmnistSplits(const std::vector<std::string>& files) {
  std::set<std::string> splits;
  for (const std::string& name : files) {
    constexpr absl::string_view kPrefix = "emnist-";
    const size_t end = name.find("-train-images");
    if (absl::StartsWith(name, kPrefix) && end != std::string::npos) {
      splits.insert(name.substr(kPrefix.size(), end - kPrefix.size()));
    }
  }
  return splits;
}

// The image shape of an IDX images header: [N, rows, cols] is one
// channel, [N, channels, rows, cols] more (as stored, before transposing).
absl::StatusOr<ImageShape> StoredImageShape(const std::vector<int32_t>& dims,
                                            const std::string& path) {
  if (dims.size() != 3 && dims.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected a 3-dimensional IDX array (images x rows x "
              "columns) or a 4-dimensional one (images x channels x rows x "
              "columns), got ",
        dims.size(), " dimensions"));
  }
  ImageShape shape;
  shape.channels = dims.size() == 4 ? dims[1] : 1;
  shape.rows = dims[dims.size() - 2];
  shape.cols = dims[dims.size() - 1];
  if (shape.size() > kMaxImagePixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": images of ", shape.channels, "x", shape.rows, "x", shape.cols,
        " values exceed the limit of ", kMaxImagePixels));
  }
  return shape;
}

ImageShape Oriented(ImageShape stored, bool transpose) {
  if (transpose) std::swap(stored.rows, stored.cols);
  return stored;
}

absl::StatusOr<Split> LoadSplit(const std::string& images_path,
                                const std::string& labels_path,
                                bool transpose, int64_t limit,
                                DatasetContent content, ImageShape* shape) {
  IdxArray images;
  if (content == DatasetContent::kLabelsOnly) {
    // The header is enough: the shape and the count to check the labels.
    PNN_ASSIGN_OR_RETURN(images.dims, ReadIdxDims(images_path));
  } else {
    PNN_ASSIGN_OR_RETURN(images, ReadIdxFile(images_path));
  }
  PNN_ASSIGN_OR_RETURN(IdxArray labels, ReadIdxFile(labels_path));
  PNN_ASSIGN_OR_RETURN(const ImageShape stored,
                       StoredImageShape(images.dims, images_path));
  if (labels.dims.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        labels_path, ": expected a 1-dimensional IDX array of labels, got ",
        labels.dims.size(), " dimensions"));
  }
  if (images.items() != labels.items()) {
    return absl::InvalidArgumentError(absl::StrCat(
        images_path, " holds ", images.items(), " images but ", labels_path,
        " holds ", labels.items(), " labels"));
  }
  const int64_t count =
      limit > 0 ? std::min<int64_t>(limit, images.items()) : images.items();
  Split split;
  if (content == DatasetContent::kAll) {
    at::Tensor pixels = at::from_blob(
        images.data.data(), {count, stored.channels, stored.rows, stored.cols},
        at::kByte);
    if (transpose) pixels = pixels.transpose(2, 3);
    // One conversion; the float tensor is the only copy kept.
    split.images =
        pixels.reshape({count, stored.size()}).to(at::kFloat).div_(255.0f);
  }
  split.labels =
      at::from_blob(labels.data.data(), {count}, at::kByte).to(at::kLong);
  *shape = Oriented(stored, transpose);
  return split;
}

}  // namespace

int64_t Dataset::memory_bytes() const {
  int64_t bytes = 0;
  for (const Split* split : {&train, &test}) {
    if (split->images.defined()) bytes += split->images.nbytes();
    if (split->labels.defined()) bytes += split->labels.nbytes();
  }
  return bytes;
}

absl::StatusOr<DatasetFiles> LocateDataset(const std::string& directory,
                                           const pnn::v1::DatasetSpec& spec) {
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    return absl::NotFoundError(absl::StrCat(
        "data set directory ", directory,
        " does not exist (for Fashion-MNIST install Debian's "
        "dataset-fashion-mnist, or point dataset.path / --data_dir at a "
        "directory of IDX files)"));
  }
  DatasetFiles files;
  const std::string& split = spec.emnist_split();
  if (!split.empty()) {
    const std::string prefix = absl::StrCat("emnist-", split, "-");
    files.train_images = FindFile(directory, {prefix + "train-images-idx3-ubyte",
                                              prefix + "train-images-idx4-ubyte"});
    files.train_labels = FindFile(directory, {prefix + "train-labels-idx1-ubyte"});
    files.test_images = FindFile(directory, {prefix + "test-images-idx3-ubyte",
                                             prefix + "test-images-idx4-ubyte"});
    files.test_labels = FindFile(directory, {prefix + "test-labels-idx1-ubyte"});
  } else {
    files.train_images = FindFile(
        directory, {"train-images-idx3-ubyte", "train-images.idx3-ubyte",
                    "train-images-idx4-ubyte"});
    files.train_labels = FindFile(
        directory, {"train-labels-idx1-ubyte", "train-labels.idx1-ubyte"});
    files.test_images = FindFile(
        directory, {"t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte",
                    "t10k-images-idx4-ubyte"});
    files.test_labels = FindFile(
        directory, {"t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"});
  }
  if (files.train_images.empty() || files.train_labels.empty() ||
      files.test_images.empty() || files.test_labels.empty()) {
    const std::vector<std::string> present = ListIdxFiles(directory);
    const std::set<std::string> splits = EmnistSplits(present);
    std::string hint;
    if (split.empty() && !splits.empty()) {
      hint = absl::StrCat("; this looks like EMNIST: set dataset.emnist_split "
                          "to one of: ",
                          absl::StrJoin(splits, ", "));
    } else if (!split.empty() && !splits.empty()) {
      hint = absl::StrCat("; EMNIST splits present: ",
                          absl::StrJoin(splits, ", "));
    }
    return absl::NotFoundError(absl::StrCat(
        "data set in ", directory, " is incomplete: expected ",
        split.empty() ? "train-images-idx3-ubyte (or idx4 for images with "
                        "channels), train-labels-idx1-ubyte, "
                        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
                      : absl::StrCat("emnist-", split,
                                     "-{train,test}-{images-idx3,labels-idx1}"
                                     "-ubyte"),
        " (each optionally .gz); found: [",
        absl::StrJoin(present, ", "), "]", hint));
  }
  switch (spec.orientation()) {
    case pnn::v1::IMAGE_ORIENTATION_TRANSPOSED:
      files.transpose = true;
      break;
    case pnn::v1::IMAGE_ORIENTATION_AS_STORED:
      files.transpose = false;
      break;
    default:
      // EMNIST stores images transposed relative to MNIST.
      files.transpose = !split.empty();
      break;
  }
  return files;
}

absl::StatusOr<Dataset> LoadDataset(const std::string& directory,
                                    const pnn::v1::DatasetSpec& spec,
                                    DatasetContent content) {
  PNN_ASSIGN_OR_RETURN(DatasetFiles files, LocateDataset(directory, spec));
  Dataset dataset;
  dataset.directory = directory;
  ImageShape train_shape;
  ImageShape test_shape;
  try {
    PNN_ASSIGN_OR_RETURN(
        dataset.train,
        LoadSplit(files.train_images, files.train_labels, files.transpose,
                  spec.train_limit(), content, &train_shape));
    PNN_ASSIGN_OR_RETURN(
        dataset.test,
        LoadSplit(files.test_images, files.test_labels, files.transpose,
                  spec.test_limit(), content, &test_shape));
  } catch (const std::exception& error) {
    return absl::InternalError(
        absl::StrCat("loading ", directory, ": ", error.what()));
  }
  dataset.channels = train_shape.channels;
  dataset.rows = train_shape.rows;
  dataset.cols = train_shape.cols;
  if (test_shape.channels != train_shape.channels ||
      test_shape.rows != train_shape.rows ||
      test_shape.cols != train_shape.cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        files.test_images, ": images are ", test_shape.channels, "x",
        test_shape.rows, "x", test_shape.cols, " but the training images (",
        files.train_images, ") are ", train_shape.channels, "x",
        train_shape.rows, "x", train_shape.cols));
  }
  const int64_t train_max = dataset.train.labels.max().item<int64_t>();
  const int64_t test_max = dataset.test.labels.max().item<int64_t>();
  if (test_max > train_max) {
    return absl::InvalidArgumentError(absl::StrCat(
        files.test_labels, ": label ", test_max,
        " never occurs in the training labels (largest ", train_max,
        "); are the files from the same data set?"));
  }
  const at::Tensor train_labels =
      dataset.train.labels.to(at::kByte).contiguous();
  PNN_RETURN_IF_ERROR(CheckClassesNumbered(train_labels.data_ptr<uint8_t>(),
                                           train_labels.numel(),
                                           files.train_labels));
  dataset.num_classes = static_cast<int>(train_max) + 1;
  return dataset;
}

absl::StatusOr<DatasetShape> ReadDatasetShape(
    const std::string& directory, const pnn::v1::DatasetSpec& spec) {
  PNN_ASSIGN_OR_RETURN(DatasetFiles files, LocateDataset(directory, spec));
  PNN_ASSIGN_OR_RETURN(std::vector<int32_t> train_dims,
                       ReadIdxDims(files.train_images));
  PNN_ASSIGN_OR_RETURN(std::vector<int32_t> test_dims,
                       ReadIdxDims(files.test_images));
  PNN_ASSIGN_OR_RETURN(const ImageShape stored,
                       StoredImageShape(train_dims, files.train_images));
  if (train_dims.size() != test_dims.size() ||
      !std::equal(train_dims.begin() + 1, train_dims.end(),
                  test_dims.begin() + 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        files.test_images, ": image size differs from ", files.train_images));
  }
  PNN_ASSIGN_OR_RETURN(IdxArray train_labels, ReadIdxFile(files.train_labels));
  PNN_ASSIGN_OR_RETURN(IdxArray test_labels, ReadIdxFile(files.test_labels));
  if (train_labels.items() != train_dims[0] ||
      test_labels.items() != test_dims[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image and label counts differ in ", directory));
  }
  DatasetShape shape;
  auto limited = [](int64_t count, int32_t limit) {
    return limit > 0 ? std::min<int64_t>(count, limit) : count;
  };
  shape.train_samples = limited(train_dims[0], spec.train_limit());
  shape.test_samples = limited(test_dims[0], spec.test_limit());
  // Same orientation rule as LoadDataset.
  const ImageShape image = Oriented(stored, files.transpose);
  shape.channels = image.channels;
  shape.rows = image.rows;
  shape.cols = image.cols;
  PNN_RETURN_IF_ERROR(CheckClassesNumbered(
      train_labels.data.data(), static_cast<int64_t>(train_labels.items()),
      files.train_labels));
  int max_label = 0;
  for (int64_t i = 0; i < shape.train_samples; ++i) {
    max_label = std::max<int>(max_label, train_labels.data[i]);
  }
  shape.num_classes = max_label + 1;
  return shape;
}

absl::StatusOr<std::string> ResolveDatasetDirectory(
    const std::string& data_root, const pnn::v1::DatasetSpec& spec,
    bool allow_absolute) {
  const fs::path path(spec.path());
  for (const auto& part : path) {
    if (part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset.path: \"", spec.path(),
          "\" must not contain \"..\"; name a directory inside the data "
          "root"));
    }
  }
  if (path.is_absolute()) {
    if (!allow_absolute) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset.path: \"", spec.path(),
          "\" must be relative to the data directory"));
    }
    return path.lexically_normal().string();
  }
  return (fs::path(data_root) / path).lexically_normal().string();
}

Dataset MakeSyntheticDataset(const SyntheticDatasetOptions& options) {
  auto generator = at::detail::createCPUGenerator(options.seed);
  const int width = options.channels * options.rows * options.cols;
  const auto float_options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor prototypes =
      at::empty({options.num_classes, width}, float_options)
          .uniform_(0.0, 1.0, generator);
  auto make_split = [&](int64_t samples) {
    Split split;
    split.labels = at::arange(samples, at::kLong) % options.num_classes;
    split.labels = split.labels.index_select(
        0, at::randperm(samples, generator, at::kLong));
    at::Tensor noise = at::empty({samples, width}, float_options)
                           .normal_(0.0, options.noise, generator);
    split.images =
        (prototypes.index_select(0, split.labels) + noise).clamp_(0.0, 1.0);
    return split;
  };
  Dataset dataset;
  dataset.train = make_split(options.train_samples);
  dataset.test = make_split(options.test_samples);
  dataset.channels = options.channels;
  dataset.rows = options.rows;
  dataset.cols = options.cols;
  dataset.num_classes = options.num_classes;
  dataset.directory = "(synthetic)";
  return dataset;
}

absl::Status WriteDatasetAsIdx(const Dataset& dataset,
                               const std::string& directory) {
  std::error_code error;
  fs::create_directories(directory, error);
  auto write_split = [&](const Split& split, const std::string& prefix) {
    IdxArray images;
    images.dims = {static_cast<int32_t>(split.size()), dataset.rows,
                   dataset.cols};
    if (dataset.channels > 1) {
      images.dims.insert(images.dims.begin() + 1, dataset.channels);
    }
    const at::Tensor bytes =
        split.images.mul(255.0f).round_().clamp_(0, 255).to(at::kByte)
            .contiguous();
    images.data.assign(bytes.data_ptr<uint8_t>(),
                       bytes.data_ptr<uint8_t>() + bytes.numel());
    IdxArray labels;
    labels.dims = {static_cast<int32_t>(split.size())};
    const at::Tensor label_bytes = split.labels.to(at::kByte).contiguous();
    labels.data.assign(label_bytes.data_ptr<uint8_t>(),
                       label_bytes.data_ptr<uint8_t>() + label_bytes.numel());
    PNN_RETURN_IF_ERROR(WriteIdxFile(
        (fs::path(directory) /
         (prefix + (dataset.channels > 1 ? "-images-idx4-ubyte.gz"
                                         : "-images-idx3-ubyte.gz")))
            .string(),
        images, /*gzip=*/true));
    return WriteIdxFile(
        (fs::path(directory) / (prefix + "-labels-idx1-ubyte.gz")).string(),
        labels, /*gzip=*/true);
  };
  PNN_RETURN_IF_ERROR(write_split(dataset.train, "train"));
  return write_split(dataset.test, "t10k");
}

}  // namespace pnn
