// The workers a coordinator knows: registration, heartbeats, graceful
// deregistration, liveness, back-off for workers that cannot be reached,
// and which worker runs which task.
//
// Thread safety: every method may be called from any thread. The registry
// has its own lock, held only for map operations: Heartbeat never waits for
// the job table, SQLite or libtorch. It never calls out while locking; the
// coordinator acts on what it returns (lost workers, displaced tasks).
// Errors are absl::Status meant for the worker's operator.
#ifndef PNN_COORDINATOR_WORKER_REGISTRY_H_
#define PNN_COORDINATOR_WORKER_REGISTRY_H_

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pnn/v1/coordinator.pb.h"

namespace pnn {

class WorkerRegistry {
 public:
  struct Options {
    absl::Duration heartbeat_interval = absl::Seconds(1);
    // A worker silent for this long is lost.
    absl::Duration worker_timeout = absl::Seconds(5);
    // A worker that could not be reached is offered no task for this long,
    // doubling with every further failure up to max_backoff.
    absl::Duration initial_backoff = absl::Seconds(2);
    absl::Duration max_backoff = absl::Seconds(60);
  };
  // The task a worker runs.
  struct Assignment {
    std::string job_id;
    int task_index = -1;
  };
  // A worker as the scheduler sees it (a copy).
  struct Worker {
    std::string id;
    pnn::v1::WorkerInfo info;
    absl::Time registered;
    absl::Time last_heartbeat;
    std::optional<Assignment> assignment;  // set while busy
    absl::Time unreachable_until = absl::InfinitePast();
    // Deregistered while busy: offered nothing, forgotten once its task's
    // stream ends (Release), lost only if it goes silent before that.
    bool draining = false;
  };
  // A registration that ended without the worker saying so.
  struct Ended {
    std::string id;
    std::string address;
    std::optional<Assignment> assignment;  // the task it ran, if any
    std::string reason;                    // for people
  };
  struct Registered {
    pnn::v1::RegisterWorkerResponse response;
    // An earlier, silent registration of the same address that this one
    // replaced (the worker restarted).
    std::optional<Ended> replaced;
  };
  struct Counts {
    int registered = 0;
    int idle = 0;     // not running a task
    int healthy = 0;  // heard from within two heartbeat intervals
    int busy = 0;
  };

  // Ids are "worker-<instance>-<n>" with a random instance per registry, so
  // the ids of two coordinator runs never collide.
  explicit WorkerRegistry(Options options);

  // INVALID_ARGUMENT for a malformed address; ALREADY_EXISTS while another
  // live worker (heard from within worker_timeout) holds the address and
  // runs a task: a registration cannot take over a live worker's work.
  absl::StatusOr<Registered> Register(const pnn::v1::WorkerInfo& info,
                                      absl::Time now);
  // NOT_FOUND for an id this coordinator does not know: register again.
  absl::Status Heartbeat(const std::string& worker_id, absl::Time now);
  // A worker that stops gracefully; returns the task it runs, if any. An
  // idle worker is forgotten at once; a busy one drains (see Worker).
  // NOT_FOUND for an unknown id.
  absl::StatusOr<std::optional<Assignment>> Deregister(
      const std::string& worker_id);
  // Removes workers silent for longer than worker_timeout.
  std::vector<Ended> ExpireSilent(absl::Time now);

  // Claims an idle worker for a task; false if it is gone or busy.
  bool Claim(const std::string& worker_id, const Assignment& assignment);
  // Frees the worker if it still runs that task (a later claim stays); a
  // draining worker is forgotten.
  void Release(const std::string& worker_id, const Assignment& assignment);
  // The worker could not be reached: no task for it until its back-off
  // passes. The back-off follows the address across re-registrations.
  void MarkUnreachable(const std::string& worker_id, absl::Time now);
  // A task ran on it: its address's back-off starts over.
  void MarkReachable(const std::string& worker_id);

  // Workers that may take a task now: idle and past their back-off.
  std::vector<Worker> Available(absl::Time now) const;
  std::vector<Worker> All() const;
  // What ListWorkers shows: every worker as the wire's WorkerStatus, by id.
  pnn::v1::ListWorkersResponse Snapshot(absl::Time now) const;
  Counts Count(absl::Time now) const;
  int size() const;

 private:
  struct Backoff {
    absl::Duration length;
    absl::Time until;
  };
  const Options options_;
  std::string instance_;
  mutable std::mutex mu_;
  int64_t next_number_ = 1;                  // guarded by mu_
  std::map<std::string, Worker> workers_;    // by id; guarded by mu_
  std::map<std::string, Backoff> backoffs_;  // by address; guarded by mu_
};

// "HOST:PORT" with a port in 1..65535.
bool IsDialableAddress(const std::string& address);

}  // namespace pnn

#endif  // PNN_COORDINATOR_WORKER_REGISTRY_H_
