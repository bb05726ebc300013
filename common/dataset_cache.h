// A process-wide cache of loaded data sets, so that a service loads each
// data set once (Fashion-MNIST is ~200 MB as floats) however many tasks use
// it. Thread-safe; concurrent requests for the same data set load it once.
#ifndef PNN_COMMON_DATASET_CACHE_H_
#define PNN_COMMON_DATASET_CACHE_H_

#include <condition_variable>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "common/dataset.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

class DatasetCache {
 public:
  // Keeps at most `capacity` data sets, evicting the least recently used.
  explicit DatasetCache(size_t capacity = 2) : capacity_(capacity) {}

  // The data set of `spec` in `directory` (see LoadDataset). Errors are not
  // cached: a data set fixed on disk loads on the next call. A labels-only
  // request is served by a whole cached data set when there is one.
  absl::StatusOr<std::shared_ptr<const Dataset>> Get(
      const std::string& directory, const pnn::v1::DatasetSpec& spec,
      DatasetContent content = DatasetContent::kAll);

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const Dataset> dataset;  // null while loading
  };

  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable loaded_;
  std::list<Entry> entries_;  // most recently used first
};

}  // namespace pnn

#endif  // PNN_COMMON_DATASET_CACHE_H_
