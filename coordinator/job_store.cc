#include "coordinator/job_store.h"

#include <mutex>

#include <sqlite3.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace pnn {
namespace {

// Finalizes a prepared statement on every path.
struct Statement {
  sqlite3_stmt* handle = nullptr;
  ~Statement() { sqlite3_finalize(handle); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    const std::string message = db != nullptr ? sqlite3_errmsg(db) : "no memory";
    sqlite3_close(db);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open job store ", path, ": ", message));
  }
  std::unique_ptr<JobStore> store(new JobStore(db, path));
  sqlite3_busy_timeout(db, 5000);
  // WAL: a reader never blocks the writer and a crash loses at most the
  // transaction in progress; NORMAL sync is durable across process crashes.
  for (const char* sql :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
        "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, "
        "sequence INTEGER NOT NULL, record BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS weights (job_id TEXT NOT NULL, "
        "task_index INTEGER NOT NULL, weights BLOB NOT NULL, "
        "PRIMARY KEY (job_id, task_index))",
        "CREATE TABLE IF NOT EXISTS resume_states (job_id TEXT NOT NULL, "
        "task_index INTEGER NOT NULL, state BLOB NOT NULL, "
        "PRIMARY KEY (job_id, task_index))"}) {
    if (absl::Status status = store->Execute(sql); !status.ok()) return status;
  }
  return store;
}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::Status JobStore::Execute(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message != nullptr ? message : "unknown error";
    sqlite3_free(message);
    return absl::InternalError(
        absl::StrCat("job store ", path_, ": ", text, " (in: ", sql, ")"));
  }
  return absl::OkStatus();
}

absl::Status JobStore::Error(const std::string& what) const {
  return absl::InternalError(
      absl::StrCat("job store ", path_, ": ", what, ": ", sqlite3_errmsg(db_)));
}

absl::Status JobStore::SaveJob(const pnn::v1::StoredJob& job) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement statement;
  if (sqlite3_prepare_v2(db_,
                         "INSERT INTO jobs (job_id, sequence, record) "
                         "VALUES (?1, ?2, ?3) ON CONFLICT(job_id) DO UPDATE "
                         "SET record = excluded.record",
                         -1, &statement.handle, nullptr) != SQLITE_OK) {
    return Error("prepare");
  }
  const std::string record = job.SerializeAsString();
  sqlite3_bind_text(statement.handle, 1, job.job().job_id().c_str(), -1,
                    SQLITE_TRANSIENT);
  sqlite3_bind_int64(statement.handle, 2, job.sequence());
  sqlite3_bind_blob(statement.handle, 3, record.data(),
                    static_cast<int>(record.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(statement.handle) != SQLITE_DONE) {
    return Error(absl::StrCat("saving job ", job.job().job_id()));
  }
  return absl::OkStatus();
}

absl::Status JobStore::SaveTaskBlob(const char* sql, const std::string& job_id,
                                    int task_index, const std::string& blob,
                                    const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement statement;
  if (sqlite3_prepare_v2(db_, sql, -1, &statement.handle, nullptr) !=
      SQLITE_OK) {
    return Error("prepare");
  }
  sqlite3_bind_text(statement.handle, 1, job_id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int(statement.handle, 2, task_index);
  sqlite3_bind_blob(statement.handle, 3, blob.data(),
                    static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(statement.handle) != SQLITE_DONE) {
    return Error(absl::StrCat("saving ", what, " of job ", job_id));
  }
  return absl::OkStatus();
}

absl::Status JobStore::SaveWeights(const std::string& job_id, int task_index,
                                   const pnn::v1::SegmentWeights& weights) {
  return SaveTaskBlob(
      "INSERT OR REPLACE INTO weights (job_id, task_index, weights) "
      "VALUES (?1, ?2, ?3)",
      job_id, task_index, weights.SerializeAsString(), "weights");
}

absl::Status JobStore::SaveResumeState(const std::string& job_id,
                                       int task_index,
                                       const pnn::v1::TrainingState& state) {
  return SaveTaskBlob(
      "INSERT OR REPLACE INTO resume_states (job_id, task_index, state) "
      "VALUES (?1, ?2, ?3)",
      job_id, task_index, state.SerializeAsString(), "a resume state");
}

absl::Status JobStore::DeleteResumeState(const std::string& job_id,
                                         int task_index) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement statement;
  if (sqlite3_prepare_v2(db_,
                         "DELETE FROM resume_states WHERE job_id = ?1 AND "
                         "task_index = ?2",
                         -1, &statement.handle, nullptr) != SQLITE_OK) {
    return Error("prepare");
  }
  sqlite3_bind_text(statement.handle, 1, job_id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int(statement.handle, 2, task_index);
  if (sqlite3_step(statement.handle) != SQLITE_DONE) {
    return Error(absl::StrCat("deleting a resume state of job ", job_id));
  }
  return absl::OkStatus();
}

absl::Status JobStore::DeleteRows(const std::string& job_id,
                                  bool with_record) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const char* sql : {"DELETE FROM weights WHERE job_id = ?1",
                          "DELETE FROM resume_states WHERE job_id = ?1",
                          "DELETE FROM jobs WHERE job_id = ?1"}) {
    if (!with_record && absl::StrContains(sql, "FROM jobs")) continue;
    Statement statement;
    if (sqlite3_prepare_v2(db_, sql, -1, &statement.handle, nullptr) !=
        SQLITE_OK) {
      return Error("prepare");
    }
    sqlite3_bind_text(statement.handle, 1, job_id.c_str(), -1,
                      SQLITE_TRANSIENT);
    if (sqlite3_step(statement.handle) != SQLITE_DONE) {
      return Error(absl::StrCat("deleting rows of job ", job_id));
    }
  }
  return absl::OkStatus();
}

absl::Status JobStore::DeleteTaskData(const std::string& job_id) {
  return DeleteRows(job_id, /*with_record=*/false);
}

absl::Status JobStore::DeleteJob(const std::string& job_id) {
  return DeleteRows(job_id, /*with_record=*/true);
}

absl::Status JobStore::ReadTaskBlobs(
    const char* sql, const std::map<std::string, size_t>& index,
    const std::function<bool(size_t, int, const void*, int)>& parse,
    const char* what, std::vector<Loaded>* loaded) {
  Statement statement;
  if (sqlite3_prepare_v2(db_, sql, -1, &statement.handle, nullptr) !=
      SQLITE_OK) {
    return Error("prepare");
  }
  int step;
  while ((step = sqlite3_step(statement.handle)) == SQLITE_ROW) {
    const std::string job_id(
        reinterpret_cast<const char*>(sqlite3_column_text(statement.handle, 0)));
    auto it = index.find(job_id);
    if (it == index.end()) continue;
    if (!parse(it->second, sqlite3_column_int(statement.handle, 1),
               sqlite3_column_blob(statement.handle, 2),
               sqlite3_column_bytes(statement.handle, 2))) {
      (*loaded)[it->second].corrupt =
          absl::StrCat("its ", what, " in the job store are corrupt");
    }
  }
  if (step != SQLITE_DONE) return Error(absl::StrCat("reading ", what));
  return absl::OkStatus();
}

namespace {

bool IsFinished(const pnn::v1::StoredJob& stored) {
  const pnn::v1::JobState state = stored.job().state();
  return state == pnn::v1::JOB_STATE_SUCCEEDED ||
         state == pnn::v1::JOB_STATE_FAILED ||
         state == pnn::v1::JOB_STATE_CANCELLED;
}

}  // namespace

absl::StatusOr<std::vector<JobStore::Loaded>> JobStore::LoadAll() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Loaded> loaded;
  std::map<std::string, size_t> index;  // unfinished, readable jobs
  {
    Statement statement;
    if (sqlite3_prepare_v2(
            db_, "SELECT job_id, sequence, record FROM jobs ORDER BY sequence",
            -1, &statement.handle, nullptr) != SQLITE_OK) {
      return Error("prepare");
    }
    int step;
    while ((step = sqlite3_step(statement.handle)) == SQLITE_ROW) {
      Loaded job;
      const char* id = reinterpret_cast<const char*>(
          sqlite3_column_text(statement.handle, 0));
      const void* blob = sqlite3_column_blob(statement.handle, 2);
      const int size = sqlite3_column_bytes(statement.handle, 2);
      if (!job.job.ParseFromArray(blob, size) ||
          job.job.job().job_id() != (id == nullptr ? "" : id)) {
        // One bad row must not keep every other job from starting.
        job.job.Clear();
        job.job.mutable_job()->set_job_id(id == nullptr ? "" : id);
        job.job.set_sequence(sqlite3_column_int64(statement.handle, 1));
        job.corrupt = "its record in the job store is corrupt";
      } else if (!IsFinished(job.job)) {
        index[job.job.job().job_id()] = loaded.size();
      }
      loaded.push_back(std::move(job));
    }
    if (step != SQLITE_DONE) return Error("reading jobs");
  }
  // Weights and resume states of finished jobs stay on disk: the model
  // artifact is what a finished job serves.
  PNN_RETURN_IF_ERROR(ReadTaskBlobs(
      "SELECT job_id, task_index, weights FROM weights", index,
      [&loaded](size_t job, int task, const void* blob, int size) {
        return loaded[job].weights[task].ParseFromArray(blob, size);
      },
      "weights", &loaded));
  PNN_RETURN_IF_ERROR(ReadTaskBlobs(
      "SELECT job_id, task_index, state FROM resume_states", index,
      [&loaded](size_t job, int task, const void* blob, int size) {
        return loaded[job].resume_states[task].ParseFromArray(blob, size);
      },
      "resume states", &loaded));
  return loaded;
}

}  // namespace pnn
