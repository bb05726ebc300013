// The job store's writer thread: job records are written here, off the
// coordinator's lock, so Heartbeat, GetJob, ListJobs and Watch never wait
// for SQLite.
//
// Writes of one job keep their order; a record queued while an older one of
// the same job still waits replaces it (only the newest state matters).
// Thread safety: every method may be called from any thread.
#ifndef PNN_COORDINATOR_STORE_WRITER_H_
#define PNN_COORDINATOR_STORE_WRITER_H_

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "pnn/v1/stored_job.pb.h"

namespace pnn {

class JobStore;

class StoreWriter {
 public:
  // `store` outlives the writer.
  explicit StoreWriter(JobStore* store);
  ~StoreWriter();  // Stop()
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Queues the job's record.
  void Save(pnn::v1::StoredJob job);
  // Queues the deletion of the job and everything stored of it; a record
  // of it still waiting is dropped.
  void Delete(const std::string& job_id);
  // Waits until nothing of the job is queued or being written; the status
  // of its last write. A caller that answers OK for a change (CancelJob)
  // waits here first.
  absl::Status Wait(const std::string& job_id);
  // Writes what is queued and ends the thread. Idempotent; later calls to
  // Save and Delete write at once, on the caller's thread.
  void Stop();

 private:
  struct Pending {
    std::optional<pnn::v1::StoredJob> save;  // empty: delete the job
  };
  void Loop();
  absl::Status Write(const std::string& job_id, const Pending& pending);

  JobStore* const store_;
  std::mutex mu_;
  std::condition_variable wake_;   // work queued, or stop
  std::condition_variable written_;
  std::map<std::string, Pending> pending_;
  std::set<std::string> writing_;
  std::map<std::string, absl::Status> last_status_;  // failures only
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_STORE_WRITER_H_
