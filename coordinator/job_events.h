// The watch fan-out: which watchers follow which job (JobWatchers), and
// each watcher's queue of that job's events (JobEventQueue).
//
// Thread safety: every method may be called from any thread.
#ifndef PNN_COORDINATOR_JOB_EVENTS_H_
#define PNN_COORDINATOR_JOB_EVENTS_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pnn/v1/coordinator.pb.h"

namespace pnn {

// Events of one job for one watcher, in order. The coordinator pushes;
// the watcher pops. `on_event` is called after each push, outside the
// queue's lock; after Close() returns it is never called again.
class JobEventQueue {
 public:
  explicit JobEventQueue(std::function<void()> on_event);
  void Push(const pnn::v1::JobEvent& event);
  std::optional<pnn::v1::JobEvent> Pop();
  void Close();

 private:
  std::mutex mu_;
  std::condition_variable idle_;
  std::deque<pnn::v1::JobEvent> events_;
  int64_t last_sequence_ = -1;
  int callbacks_running_ = 0;
  bool closed_ = false;
  std::function<void()> on_event_;
};

// The watchers of each job. Events get one sequence across all jobs, so a
// watcher can tell a newer snapshot from an older one. Publishing only
// queues (JobEventQueue::Push starts a write, never calls back into the
// coordinator), so it may be called under the coordinator's lock.
class JobWatchers {
 public:
  // Adds `queue` to the job's watchers and pushes `current` into it first.
  void Add(const std::string& job_id, std::shared_ptr<JobEventQueue> queue,
           const pnn::v1::Job& current);
  // Removes `queue` from every job it watches.
  void Remove(const std::shared_ptr<JobEventQueue>& queue);
  // Whether anybody watches the job (to skip building its snapshot).
  bool Watched(const std::string& job_id) const;
  // Pushes an event with `job` and `message` to the job's watchers.
  void Publish(const pnn::v1::Job& job, const std::string& message);
  // Forgets a deleted job's watchers (their streams end on their own).
  void Forget(const std::string& job_id);

 private:
  pnn::v1::JobEvent Event(const pnn::v1::Job& job, const std::string& message);

  mutable std::mutex mu_;
  int64_t next_sequence_ = 1;
  std::map<std::string, std::vector<std::shared_ptr<JobEventQueue>>> watchers_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_JOB_EVENTS_H_
