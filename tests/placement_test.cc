// Placement as pure functions: no registry, no gRPC.
#include "coordinator/placement.h"

#include "gtest/gtest.h"

namespace pnn {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1000000);

WorkerRegistry::Worker Worker(const std::string& id, const std::string& device,
                              absl::Time heard = kNow) {
  WorkerRegistry::Worker worker;
  worker.id = id;
  worker.info.set_device(device);
  worker.last_heartbeat = heard;
  return worker;
}

TEST(PlacementTest, DevicesMatchByKindAndIndex) {
  EXPECT_TRUE(DeviceMatches("cpu", "cpu"));
  EXPECT_FALSE(DeviceMatches("cpu", "cuda:0"));
  EXPECT_TRUE(DeviceMatches("cuda", "cuda:1"));
  EXPECT_FALSE(DeviceMatches("cuda", "cpu"));
  EXPECT_TRUE(DeviceMatches("cuda:1", "cuda:1"));
  EXPECT_FALSE(DeviceMatches("cuda:1", "cuda:0"));
}

TEST(PlacementTest, TasksTakeMatchingWorkersOnceEachInOrder) {
  const std::vector<WorkerRegistry::Worker> available = {
      Worker("a", "cuda:0"), Worker("b", "cpu"), Worker("c", "cpu")};
  const auto placed =
      PlaceTasks({{0, "cpu"}, {1, "cuda"}, {2, "cpu"}, {3, "cpu"}}, available);
  ASSERT_EQ(placed.size(), 3u);
  EXPECT_EQ(placed[0], std::make_pair(size_t{0}, size_t{1}));
  EXPECT_EQ(placed[1], std::make_pair(size_t{1}, size_t{0}));
  EXPECT_EQ(placed[2], std::make_pair(size_t{2}, size_t{2}));
  // A task no worker can run does not block the ones after it.
  const auto skipped = PlaceTasks({{0, "cuda:3"}, {1, "cpu"}}, available);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_EQ(skipped[0].first, 1u);
}

WorkerRegistry::Worker Threads(const std::string& id, int threads,
                               const std::string& device = "cpu") {
  WorkerRegistry::Worker worker = Worker(id, device);
  worker.info.set_threads(threads);
  return worker;
}

// A heterogeneous pool: the heaviest segment goes to the fastest worker
// (a CUDA worker, then the most threads), whatever order they come in.
TEST(PlacementTest, TheHeaviestTaskGetsTheFastestWorker) {
  const std::vector<WorkerRegistry::Worker> available = {
      Threads("small", 1), Threads("big", 8), Threads("medium", 4)};
  const auto placed = PlaceTasks(
      {{0, "cpu", 700}, {1, "cpu", 100}, {2, "cpu", 300}}, available);
  ASSERT_EQ(placed.size(), 3u);
  EXPECT_EQ(placed[0], std::make_pair(size_t{0}, size_t{1}));  // 700: big
  EXPECT_EQ(placed[1], std::make_pair(size_t{1}, size_t{0}));  // 100: small
  EXPECT_EQ(placed[2], std::make_pair(size_t{2}, size_t{2}));  // 300: medium
  // Only the tasks that start now are matched: the first two, on the two
  // workers there are, the heavier on the faster.
  const auto two = PlaceTasks({{0, "cpu", 1}, {1, "cpu", 9}, {2, "cpu", 50}},
                              {Threads("fast", 4), Threads("slow", 1)});
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0], std::make_pair(size_t{0}, size_t{1}));
  EXPECT_EQ(two[1], std::make_pair(size_t{1}, size_t{0}));
  // A GPU beats threads; device matching still decides who may run what.
  const auto mixed =
      PlaceTasks({{0, "cuda", 1}, {1, "cuda", 5}, {2, "cpu", 9}},
                 {Threads("cpu16", 16), Threads("gpu-a", 2, "cuda:0"),
                  Threads("gpu-b", 8, "cuda:1")});
  ASSERT_EQ(mixed.size(), 3u);
  EXPECT_EQ(mixed[0], std::make_pair(size_t{0}, size_t{1}));
  EXPECT_EQ(mixed[1], std::make_pair(size_t{1}, size_t{2}));
  EXPECT_EQ(mixed[2], std::make_pair(size_t{2}, size_t{0}));
}

TEST(PlacementTest, APipelinesHeaviestStageGetsTheFastestWorker) {
  const std::vector<WorkerRegistry::Worker> available = {
      Threads("a", 1), Threads("b", 4), Threads("c", 2)};
  const absl::Time heard_since = kNow - absl::Seconds(2);
  EXPECT_EQ(PlacePipeline("cpu", 3, available, 3, heard_since, {5, 1, 9})
                .workers,
            (std::vector<size_t>{2, 0, 1}));
  EXPECT_EQ(PlacePipeline("cpu", 2, available, 3, heard_since, {7, 7})
                .workers,
            (std::vector<size_t>{1, 0}));
}

TEST(PlacementTest, APipelineStartsWholeOrWaitsForItsGang) {
  const std::vector<WorkerRegistry::Worker> available = {
      Worker("a", "cpu"), Worker("stale", "cpu", kNow - absl::Seconds(10)),
      Worker("b", "cpu"), Worker("c", "cpu")};
  const absl::Time heard_since = kNow - absl::Seconds(2);
  PipelinePlacement two = PlacePipeline("cpu", 2, available, 4, heard_since);
  EXPECT_EQ(two.workers, (std::vector<size_t>{0, 2}));
  // Three stages fit the three recent workers; four do not, and with four
  // matching registered the job waits (later jobs too).
  EXPECT_EQ(PlacePipeline("cpu", 3, available, 4, heard_since).workers,
            (std::vector<size_t>{0, 2, 3}));
  PipelinePlacement four = PlacePipeline("cpu", 4, available, 4, heard_since);
  EXPECT_TRUE(four.workers.empty());
  EXPECT_TRUE(four.gang_waits);
  // Too few such workers registered for it ever to start: others go first.
  PipelinePlacement never = PlacePipeline("cpu", 5, available, 4, heard_since);
  EXPECT_TRUE(never.workers.empty());
  EXPECT_FALSE(never.gang_waits);
}

TEST(PlacementTest, WaitMessagesSayWhatIsMissing) {
  const std::vector<WorkerRegistry::Worker> none;
  const std::vector<WorkerRegistry::Worker> cpus = {Worker("a", "cpu"),
                                                    Worker("b", "cpu")};
  EXPECT_EQ(WaitMessage("cpu", 0, none, none),
            "waiting for a worker to register (none is registered)");
  // A CUDA job on CPU workers: not "waiting for an idle worker (2 idle)".
  EXPECT_EQ(WaitMessage("cuda", 0, cpus, cpus),
            "waiting for a worker with device \"cuda\": none of the 2 "
            "registered offers it (2 cpu)");
  const std::vector<WorkerRegistry::Worker> mixed = {
      Worker("a", "cpu"), Worker("b", "cuda:0"), Worker("c", "cuda:1")};
  EXPECT_EQ(WaitMessage("cuda:2", 0, mixed, mixed),
            "waiting for a worker with device \"cuda:2\": none of the 3 "
            "registered offers it (1 cpu, 1 cuda:0, 1 cuda:1)");
  EXPECT_EQ(WaitMessage("cuda", 0, mixed, {mixed[0]}),
            "waiting for an idle cuda worker (2 registered, all busy)");
  EXPECT_EQ(WaitMessage("", 0, cpus, {cpus[1]}),
            "waiting for an idle worker (2 registered, 1 idle)");
  EXPECT_EQ(WaitMessage("cpu", 3, cpus, cpus),
            "waiting for 3 idle workers at once (a pipeline: one per "
            "stage); 2 of 2 registered are idle");
}

}  // namespace
}  // namespace pnn
