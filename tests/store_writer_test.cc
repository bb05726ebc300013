// The store's writer thread: what it is given is written, the newest record
// of a job wins, deletes are ordered with saves, and a write that fails is
// reported to whoever waits for it.
#include "coordinator/store_writer.h"

#include <sqlite3.h>

#include <string>

#include "coordinator/job_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

pnn::v1::StoredJob Job(const std::string& id, const std::string& message) {
  pnn::v1::StoredJob job;
  job.set_sequence(1);
  job.mutable_job()->set_job_id(id);
  job.mutable_job()->set_message(message);
  return job;
}

class StoreWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = JobStore::Open(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  std::vector<JobStore::Loaded> Load() {
    auto loaded = store_->LoadAll();
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? *std::move(loaded) : std::vector<JobStore::Loaded>{};
  }

  TempDir dir_;
  const std::string path_ = dir_.path() + "/jobs.db";
  std::unique_ptr<JobStore> store_;
};

TEST_F(StoreWriterTest, TheNewestRecordOfAJobIsWritten) {
  StoreWriter writer(store_.get());
  for (int i = 0; i < 50; ++i) writer.Save(Job("job-a", std::to_string(i)));
  writer.Save(Job("job-b", "b"));
  EXPECT_TRUE(writer.Wait("job-a").ok());
  EXPECT_TRUE(writer.Wait("job-b").ok());
  const auto loaded = Load();
  ASSERT_EQ(loaded.size(), 2u);
  for (const auto& job : loaded) {
    EXPECT_EQ(job.job.job().message(),
              job.job.job().job_id() == "job-a" ? "49" : "b");
  }
}

TEST_F(StoreWriterTest, ADeleteAfterASaveLeavesNothing) {
  StoreWriter writer(store_.get());
  writer.Save(Job("job-a", "first"));
  writer.Delete("job-a");
  EXPECT_TRUE(writer.Wait("job-a").ok());
  EXPECT_TRUE(Load().empty());
  // And a save after a delete is written.
  writer.Delete("job-b");
  writer.Save(Job("job-b", "again"));
  EXPECT_TRUE(writer.Wait("job-b").ok());
  ASSERT_EQ(Load().size(), 1u);
}

TEST_F(StoreWriterTest, StopWritesWhatIsQueued) {
  {
    StoreWriter writer(store_.get());
    for (int i = 0; i < 20; ++i) {
      writer.Save(Job("job-" + std::to_string(i), "queued"));
    }
    writer.Stop();
    // After Stop, writes happen on the caller's thread.
    writer.Save(Job("job-late", "late"));
  }
  EXPECT_EQ(Load().size(), 21u);
}

TEST_F(StoreWriterTest, AFailedWriteIsReportedUntilAWriteSucceeds) {
  StoreWriter writer(store_.get());
  // Another connection holds the write lock, as a full disk or read-only
  // file would refuse the write (after the store's busy timeout).
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr),
            SQLITE_OK);
  writer.Save(Job("job-a", "refused"));
  const absl::Status refused = writer.Wait("job-a");
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()), HasSubstr("locked"));
  writer.Save(Job("job-a", "accepted"));
  EXPECT_TRUE(writer.Wait("job-a").ok());
  ASSERT_EQ(Load().size(), 1u);
}

}  // namespace
}  // namespace pnn
