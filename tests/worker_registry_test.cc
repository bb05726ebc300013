// The worker registry without gRPC: ids, liveness, address ownership,
// back-off and graceful deregistration.
#include "coordinator/worker_registry.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

WorkerRegistry::Options Options() {
  WorkerRegistry::Options options;
  options.heartbeat_interval = absl::Seconds(1);
  options.worker_timeout = absl::Seconds(5);
  options.initial_backoff = absl::Seconds(2);
  options.max_backoff = absl::Seconds(8);
  return options;
}

pnn::v1::WorkerInfo Info(const std::string& address) {
  pnn::v1::WorkerInfo info;
  info.set_address(address);
  return info;
}

const absl::Time kStart = absl::FromUnixSeconds(1000000);

TEST(WorkerRegistryTest, IdsOfTwoCoordinatorRunsNeverCollide) {
  // Fault: ids restarted at worker-1 after a coordinator restart, so a
  // re-registering worker could take the id another worker still used.
  std::set<std::string> ids;
  for (int run = 0; run < 20; ++run) {
    WorkerRegistry registry(Options());
    for (int i = 0; i < 3; ++i) {
      auto registered = registry.Register(
          Info("127.0.0.1:" + std::to_string(5000 + i)), kStart);
      ASSERT_TRUE(registered.ok()) << registered.status();
      EXPECT_TRUE(ids.insert(registered->response.worker_id()).second)
          << registered->response.worker_id();
    }
  }
}

TEST(WorkerRegistryTest, UnknownIdsMustRegisterAgain) {
  WorkerRegistry registry(Options());
  EXPECT_EQ(registry.Heartbeat("worker-1", kStart).code(),
            absl::StatusCode::kNotFound);
  auto registered = registry.Register(Info("127.0.0.1:5000"), kStart);
  ASSERT_TRUE(registered.ok());
  EXPECT_TRUE(
      registry.Heartbeat(registered->response.worker_id(), kStart).ok());
  // A very long id is not echoed whole.
  const absl::Status status =
      registry.Heartbeat(std::string(100000, 'x'), kStart);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_LT(status.message().size(), 200u);
}

TEST(WorkerRegistryTest, SilentWorkersExpireWithTheirTask) {
  WorkerRegistry registry(Options());
  auto a = registry.Register(Info("127.0.0.1:5000"), kStart);
  auto b = registry.Register(Info("127.0.0.1:5001"), kStart);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(registry.Claim(a->response.worker_id(), {"job-1", 0}));
  EXPECT_FALSE(registry.Claim(a->response.worker_id(), {"job-2", 0}));
  ASSERT_TRUE(
      registry.Heartbeat(b->response.worker_id(), kStart + absl::Seconds(4))
          .ok());
  auto ended = registry.ExpireSilent(kStart + absl::Seconds(6));
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].id, a->response.worker_id());
  ASSERT_TRUE(ended[0].assignment.has_value());
  EXPECT_EQ(ended[0].assignment->job_id, "job-1");
  EXPECT_THAT(ended[0].reason, HasSubstr("no heartbeat"));
  EXPECT_EQ(registry.size(), 1);
}

TEST(WorkerRegistryTest, ARegistrationCannotTakeOverALiveBusyWorker) {
  // Fault: registering a live worker's address cancelled its task.
  WorkerRegistry registry(Options());
  auto owner = registry.Register(Info("127.0.0.1:5000"), kStart);
  ASSERT_TRUE(owner.ok());
  ASSERT_TRUE(registry.Claim(owner->response.worker_id(), {"job-1", 0}));
  auto intruder =
      registry.Register(Info("127.0.0.1:5000"), kStart + absl::Seconds(1));
  EXPECT_EQ(intruder.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(intruder.status().message()),
              HasSubstr(owner->response.worker_id()));
  EXPECT_TRUE(
      registry.Heartbeat(owner->response.worker_id(), kStart + absl::Seconds(2))
          .ok());
  // Once the owner is silent past the timeout, a restarted worker may take
  // the address; the old registration's task is handed back.
  auto restarted =
      registry.Register(Info("127.0.0.1:5000"), kStart + absl::Seconds(8));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  ASSERT_TRUE(restarted->replaced.has_value());
  ASSERT_TRUE(restarted->replaced->assignment.has_value());
  EXPECT_EQ(restarted->replaced->assignment->job_id, "job-1");
  EXPECT_EQ(registry.size(), 1);
}

TEST(WorkerRegistryTest, AnIdleWorkerRestartingReplacesItsRegistration) {
  WorkerRegistry registry(Options());
  auto first = registry.Register(Info("127.0.0.1:5000"), kStart);
  auto second = registry.Register(Info("127.0.0.1:5000"), kStart);
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(second->replaced.has_value());
  EXPECT_FALSE(second->replaced->assignment.has_value());
  EXPECT_EQ(registry.size(), 1);
  EXPECT_EQ(registry.Heartbeat(first->response.worker_id(), kStart).code(),
            absl::StatusCode::kNotFound);
}

TEST(WorkerRegistryTest, UnreachableWorkersBackOffAcrossRegistrations) {
  // Fault: a worker with a wrong --advertise_address was handed every
  // retry at once and failed each job in about 2 s.
  WorkerRegistry registry(Options());
  auto bad =
      registry.Register(Info("wrong-advertise-address.invalid:5000"), kStart);
  auto good = registry.Register(Info("127.0.0.1:5001"), kStart);
  ASSERT_TRUE(bad.ok() && good.ok());
  const std::string bad_id = bad->response.worker_id();
  registry.MarkUnreachable(bad_id, kStart);
  auto available = registry.Available(kStart + absl::Seconds(1));
  ASSERT_EQ(available.size(), 1u);
  EXPECT_EQ(available[0].id, good->response.worker_id());
  EXPECT_EQ(registry.Available(kStart + absl::Seconds(3)).size(), 2u);
  // Again: twice as long, and re-registering does not reset it.
  registry.MarkUnreachable(bad_id, kStart + absl::Seconds(3));
  auto again = registry.Register(Info("wrong-advertise-address.invalid:5000"),
                                 kStart + absl::Seconds(4));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(registry.Available(kStart + absl::Seconds(6)).size(), 1u);
  EXPECT_EQ(registry.Available(kStart + absl::Seconds(8)).size(), 2u);
  // A task that ran there resets the back-off.
  registry.MarkUnreachable(again->response.worker_id(),
                           kStart + absl::Seconds(8));
  registry.MarkReachable(again->response.worker_id());
  EXPECT_EQ(registry.Available(kStart + absl::Seconds(8)).size(), 2u);
}

TEST(WorkerRegistryTest, DeregisterReturnsTheRunningTask) {
  WorkerRegistry registry(Options());
  auto worker = registry.Register(Info("127.0.0.1:5000"), kStart);
  ASSERT_TRUE(worker.ok());
  const std::string id = worker->response.worker_id();
  ASSERT_TRUE(registry.Claim(id, {"job-1", 1}));
  registry.Release(id, {"job-1", 0});  // not its task: no effect
  auto deregistered = registry.Deregister(id);
  ASSERT_TRUE(deregistered.ok());
  ASSERT_TRUE(deregistered->has_value());
  EXPECT_EQ((*deregistered)->task_index, 1);
  // It drains: offered nothing, forgotten once its task's stream ends.
  EXPECT_EQ(registry.size(), 1);
  EXPECT_TRUE(registry.Available(kStart).empty());
  registry.Release(id, {"job-1", 1});
  EXPECT_EQ(registry.size(), 0);
  EXPECT_EQ(registry.Deregister(id).status().code(),
            absl::StatusCode::kNotFound);
  // An idle worker is forgotten at once.
  auto idle = registry.Register(Info("127.0.0.1:5001"), kStart);
  ASSERT_TRUE(idle.ok());
  auto gone = registry.Deregister(idle->response.worker_id());
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
  EXPECT_EQ(registry.size(), 0);
}

TEST(WorkerRegistryTest, MalformedRegistrationsAreRefused) {
  WorkerRegistry registry(Options());
  for (const char* address : {"nonsense", ":5000", "host:0", "host:70000"}) {
    EXPECT_EQ(registry.Register(Info(address), kStart).status().code(),
              absl::StatusCode::kInvalidArgument)
        << address;
  }
  pnn::v1::WorkerInfo info = Info("127.0.0.1:5000");
  info.set_name(std::string(10000, 'n'));
  EXPECT_EQ(registry.Register(info, kStart).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pnn
