#include "common/dataset_cache.h"

#include "absl/strings/str_cat.h"

namespace pnn {

absl::StatusOr<std::shared_ptr<const Dataset>> DatasetCache::Get(
    const std::string& directory, const pnn::v1::DatasetSpec& spec,
    DatasetContent content) {
  const std::string whole_key = absl::StrCat(
      directory, "|", spec.emnist_split(), "|", spec.orientation(), "|",
      spec.train_limit(), "|", spec.test_limit());
  const std::string key = content == DatasetContent::kAll
                              ? whole_key
                              : absl::StrCat(whole_key, "|labels");
  std::unique_lock<std::mutex> lock(mu_);
  if (content == DatasetContent::kLabelsOnly) {
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->key == whole_key && it->dataset != nullptr) {
        entries_.splice(entries_.begin(), entries_, it);
        return it->dataset;
      }
    }
  }
  for (;;) {
    auto it = entries_.begin();
    for (; it != entries_.end() && it->key != key; ++it) {
    }
    if (it == entries_.end()) break;
    if (it->dataset != nullptr) {
      entries_.splice(entries_.begin(), entries_, it);
      return it->dataset;
    }
    loaded_.wait(lock);  // another thread is loading it
  }
  entries_.push_front(Entry{key, nullptr});
  lock.unlock();
  absl::StatusOr<Dataset> loaded = LoadDataset(directory, spec, content);
  lock.lock();
  auto it = entries_.begin();
  for (; it != entries_.end() && it->key != key; ++it) {
  }
  if (!loaded.ok()) {
    entries_.erase(it);
    loaded_.notify_all();
    return loaded.status();
  }
  it->dataset = std::make_shared<const Dataset>(*std::move(loaded));
  std::shared_ptr<const Dataset> result = it->dataset;
  while (entries_.size() > capacity_) {
    // Never evict an entry that is still loading.
    auto victim = std::prev(entries_.end());
    while (victim != entries_.begin() && victim->dataset == nullptr) --victim;
    if (victim->dataset == nullptr || victim->key == key) break;
    entries_.erase(victim);
  }
  loaded_.notify_all();
  return result;
}

}  // namespace pnn
