#include "coordinator/job_events.h"

namespace pnn {

JobEventQueue::JobEventQueue(std::function<void()> on_event)
    : on_event_(std::move(on_event)) {}

void JobEventQueue::Push(const pnn::v1::JobEvent& event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || event.sequence() <= last_sequence_) return;
    last_sequence_ = event.sequence();
    // Events carry whole snapshots: a slow watcher may skip intermediate
    // ones, never the last.
    while (events_.size() >= 64) events_.pop_front();
    events_.push_back(event);
    ++callbacks_running_;
  }
  on_event_();
  std::lock_guard<std::mutex> lock(mu_);
  if (--callbacks_running_ == 0) idle_.notify_all();
}

std::optional<pnn::v1::JobEvent> JobEventQueue::Pop() {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.empty()) return std::nullopt;
  pnn::v1::JobEvent event = std::move(events_.front());
  events_.pop_front();
  return event;
}

void JobEventQueue::Close() {
  std::unique_lock<std::mutex> lock(mu_);
  closed_ = true;
  idle_.wait(lock, [this] { return callbacks_running_ == 0; });
}

}  // namespace pnn
