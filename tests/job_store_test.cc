// The coordinator's SQLite job store: what is written is what a restarted
// coordinator reads, and resume states go away once a task has finished.
#include "coordinator/job_store.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pnn {
namespace {

pnn::v1::StoredJob Job(const std::string& id, int64_t sequence) {
  pnn::v1::StoredJob job;
  job.set_sequence(sequence);
  job.mutable_job()->set_job_id(id);
  return job;
}

pnn::v1::TrainingState State(int epochs_done) {
  pnn::v1::TrainingState state;
  state.set_epochs_done(epochs_done);
  state.set_optimizer_state(std::string(1024, 'x'));
  state.mutable_weights()->set_segment_index(1);
  return state;
}

TEST(JobStoreTest, WhatIsSavedIsLoadedAfterReopeningAndResumeStatesCanGo) {
  TempDir dir;
  const std::string path = dir.path() + "/jobs.db";
  {
    auto store = JobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->SaveJob(Job("job-b", 2)).ok());
    ASSERT_TRUE((*store)->SaveJob(Job("job-a", 1)).ok());
    pnn::v1::SegmentWeights weights;
    weights.set_segment_index(0);
    ASSERT_TRUE((*store)->SaveWeights("job-a", 0, weights).ok());
    // The latest state replaces the previous one.
    ASSERT_TRUE((*store)->SaveResumeState("job-a", 1, State(1)).ok());
    ASSERT_TRUE((*store)->SaveResumeState("job-a", 1, State(2)).ok());
    ASSERT_TRUE((*store)->SaveResumeState("job-b", 0, State(3)).ok());
    ASSERT_TRUE((*store)->DeleteResumeState("job-b", 0).ok());
  }
  auto store = JobStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto loaded = (*store)->LoadAll();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  const JobStore::Loaded& a = (*loaded)[0];  // submission order
  const JobStore::Loaded& b = (*loaded)[1];
  EXPECT_EQ(a.job.job().job_id(), "job-a");
  EXPECT_EQ(a.weights.count(0), 1u);
  ASSERT_EQ(a.resume_states.count(1), 1u);
  EXPECT_EQ(a.resume_states.at(1).epochs_done(), 2);
  EXPECT_EQ(a.resume_states.at(1).optimizer_state().size(), 1024u);
  EXPECT_TRUE(b.resume_states.empty());
}

TEST(JobStoreTest, FinishedJobsLoadWithoutWeightsAndCanBeDeleted) {
  TempDir dir;
  const std::string path = dir.path() + "/jobs.db";
  auto store = JobStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  pnn::v1::StoredJob done = Job("job-done", 1);
  done.mutable_job()->set_state(pnn::v1::JOB_STATE_SUCCEEDED);
  ASSERT_TRUE((*store)->SaveJob(done).ok());
  ASSERT_TRUE((*store)->SaveJob(Job("job-gone", 2)).ok());
  pnn::v1::SegmentWeights weights;
  ASSERT_TRUE((*store)->SaveWeights("job-done", 0, weights).ok());
  ASSERT_TRUE((*store)->SaveWeights("job-gone", 0, weights).ok());
  auto loaded = (*store)->LoadAll();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->size(), 2u);
  // A finished job serves its model file: its weights stay on disk.
  EXPECT_TRUE((*loaded)[0].weights.empty());
  EXPECT_EQ((*loaded)[1].weights.size(), 1u);
  ASSERT_TRUE((*store)->DeleteTaskData("job-done").ok());
  ASSERT_TRUE((*store)->DeleteJob("job-gone").ok());
  loaded = (*store)->LoadAll();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].job.job().job_id(), "job-done");
}

}  // namespace
}  // namespace pnn
