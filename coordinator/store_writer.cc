#include "coordinator/store_writer.h"

#include <cstdio>
#include <utility>

#include "coordinator/job_store.h"

namespace pnn {

StoreWriter::StoreWriter(JobStore* store)
    : store_(store), thread_([this] { Loop(); }) {}

StoreWriter::~StoreWriter() { Stop(); }

void StoreWriter::Save(pnn::v1::StoredJob job) {
  std::string job_id = job.job().job_id();
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) {
    lock.unlock();
    Write(job_id, Pending{std::move(job)}).IgnoreError();  // logged
    return;
  }
  pending_[std::move(job_id)].save = std::move(job);
  wake_.notify_one();
}

void StoreWriter::Delete(const std::string& job_id) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) {
    lock.unlock();
    Write(job_id, Pending{}).IgnoreError();  // logged
    return;
  }
  pending_[job_id].save.reset();
  wake_.notify_one();
}

absl::Status StoreWriter::Wait(const std::string& job_id) {
  std::unique_lock<std::mutex> lock(mu_);
  written_.wait(lock, [&] {
    return pending_.count(job_id) == 0 && writing_.count(job_id) == 0;
  });
  auto failed = last_status_.find(job_id);
  return failed == last_status_.end() ? absl::OkStatus() : failed->second;
}

void StoreWriter::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void StoreWriter::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
    if (pending_.empty()) return;  // stopping, and everything is written
    std::map<std::string, Pending> batch;
    batch.swap(pending_);
    for (const auto& [job_id, pending] : batch) writing_.insert(job_id);
    lock.unlock();
    std::map<std::string, absl::Status> results;
    for (const auto& [job_id, pending] : batch) {
      results[job_id] = Write(job_id, pending);
    }
    lock.lock();
    for (auto& [job_id, status] : results) {
      writing_.erase(job_id);
      if (status.ok()) {
        last_status_.erase(job_id);
      } else {
        last_status_[job_id] = std::move(status);
      }
    }
    written_.notify_all();
  }
}

absl::Status StoreWriter::Write(const std::string& job_id,
                                const Pending& pending) {
  absl::Status status = pending.save.has_value()
                            ? store_->SaveJob(*pending.save)
                            : store_->DeleteJob(job_id);
  if (!status.ok()) {
    // The coordinator goes on; this job's latest state would not survive a
    // restart.
    std::fprintf(stderr, "pnn-coordinator: %s\n",
                 std::string(status.message()).c_str());
  }
  return status;
}

}  // namespace pnn
