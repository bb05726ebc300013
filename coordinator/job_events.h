// The watch fan-out's queue: the events of one job for one watcher.
//
// Thread safety: Push, Pop and Close may be called from any thread.
#ifndef PNN_COORDINATOR_JOB_EVENTS_H_
#define PNN_COORDINATOR_JOB_EVENTS_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>

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

}  // namespace pnn

#endif  // PNN_COORDINATOR_JOB_EVENTS_H_
