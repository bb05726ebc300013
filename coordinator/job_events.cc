#include "coordinator/job_events.h"

#include <algorithm>

#include "coordinator/proto_time.h"

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

pnn::v1::JobEvent JobWatchers::Event(const pnn::v1::Job& job,
                                     const std::string& message) {
  pnn::v1::JobEvent event;
  *event.mutable_time() = ProtoNow();
  event.set_message(message);
  *event.mutable_job() = job;
  event.set_sequence(next_sequence_++);
  return event;
}

void JobWatchers::Add(const std::string& job_id,
                      std::shared_ptr<JobEventQueue> queue,
                      const pnn::v1::Job& current) {
  std::lock_guard<std::mutex> lock(mu_);
  queue->Push(Event(current, "current state"));
  watchers_[job_id].push_back(std::move(queue));
}

void JobWatchers::Remove(const std::shared_ptr<JobEventQueue>& queue) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = watchers_.begin(); it != watchers_.end();) {
    auto& queues = it->second;
    queues.erase(std::remove(queues.begin(), queues.end(), queue),
                 queues.end());
    it = queues.empty() ? watchers_.erase(it) : std::next(it);
  }
}

bool JobWatchers::Watched(const std::string& job_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return watchers_.count(job_id) > 0;
}

void JobWatchers::Publish(const pnn::v1::Job& job, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = watchers_.find(job.job_id());
  if (it == watchers_.end()) return;
  const pnn::v1::JobEvent event = Event(job, message);
  for (const auto& queue : it->second) queue->Push(event);
}

void JobWatchers::Forget(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.erase(job_id);
}

}  // namespace pnn
