// Durable storage of the coordinator's jobs: an SQLite database in WAL mode
// under the state directory. A job's record is rewritten at every state
// change; a task's trained weights are written once, when it succeeds, and
// its resumable state after every epoch while it trains.
// After a crash, LoadAll returns what was last written.
//
// Thread safety: thread-safe (one connection behind the store's own lock),
// so the coordinator writes without holding its job table's lock.
// Errors are absl::Status naming the database and SQLite's message.
#ifndef PNN_COORDINATOR_JOB_STORE_H_
#define PNN_COORDINATOR_JOB_STORE_H_

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pnn/v1/segment.pb.h"
#include "pnn/v1/stored_job.pb.h"

struct sqlite3;

namespace pnn {

class JobStore {
 public:
  // Opens (creating if needed) the database at `path`.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();

  absl::Status SaveJob(const pnn::v1::StoredJob& job);
  absl::Status SaveWeights(const std::string& job_id, int task_index,
                           const pnn::v1::SegmentWeights& weights);
  // The task's latest resumable state (replaces the previous one).
  absl::Status SaveResumeState(const std::string& job_id, int task_index,
                               const pnn::v1::TrainingState& state);
  // Forgets it once the task has its weights: states are megabytes each.
  absl::Status DeleteResumeState(const std::string& job_id, int task_index);
  // A finished job's weights and resume states (its model file is what it
  // serves); the job's record stays.
  absl::Status DeleteTaskData(const std::string& job_id);
  // The job's record and everything else stored of it.
  absl::Status DeleteJob(const std::string& job_id);

  struct Loaded {
    pnn::v1::StoredJob job;
    std::map<int, pnn::v1::SegmentWeights> weights;  // by task index
    std::map<int, pnn::v1::TrainingState> resume_states;  // by task index
    // Non-empty when the job's rows cannot be read: `job` then holds only
    // its id and sequence, and the coordinator marks it FAILED.
    std::string corrupt;
  };
  // Every stored job, in submission order. Weights and resume states are
  // loaded for unfinished jobs only (finished ones serve their model file).
  absl::StatusOr<std::vector<Loaded>> LoadAll();

 private:
  JobStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  absl::Status Execute(const char* sql);
  // `sql` inserts (?1 job_id, ?2 task_index, ?3 blob).
  absl::Status SaveTaskBlob(const char* sql, const std::string& job_id,
                            int task_index, const std::string& blob,
                            const char* what);
  // `sql` selects (job_id, task_index, blob); rows of jobs in `index` (job
  // id -> position) go to `parse`, which returns false for a corrupt blob;
  // that job of `loaded` is then marked corrupt.
  absl::Status ReadTaskBlobs(
      const char* sql, const std::map<std::string, size_t>& index,
      const std::function<bool(size_t, int, const void*, int)>& parse,
      const char* what, std::vector<Loaded>* loaded);
  absl::Status Error(const std::string& what) const;
  absl::Status DeleteRows(const std::string& job_id, bool with_record);

  mutable std::mutex mu_;  // guards db_ (and its error message)
  sqlite3* db_;
  const std::string path_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_JOB_STORE_H_
