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
            "waiting for 3 idle workers at once (model-parallel: one per "
            "stage); 2 of 2 registered are idle");
}

}  // namespace
}  // namespace pnn
