// Durable storage of the coordinator's jobs: an SQLite database in WAL mode
// under the state directory. A job's record is rewritten at every state
// change; a task's trained weights are written once, when it succeeds.
// After a crash, LoadAll returns what was last written.
//
// Thread safety: not thread-safe; the coordinator calls it under its lock.
// Errors are absl::Status naming the database and SQLite's message.
#ifndef PNN_COORDINATOR_JOB_STORE_H_
#define PNN_COORDINATOR_JOB_STORE_H_

#include <map>
#include <memory>
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

  struct Loaded {
    pnn::v1::StoredJob job;
    std::map<int, pnn::v1::SegmentWeights> weights;  // by task index
  };
  // Every stored job, in submission order.
  absl::StatusOr<std::vector<Loaded>> LoadAll();

 private:
  JobStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  absl::Status Execute(const char* sql);
  absl::Status Error(const std::string& what) const;

  sqlite3* db_;
  const std::string path_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_JOB_STORE_H_
