#include "coordinator/worker_registry.h"

#include <algorithm>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/proto_time.h"

namespace pnn {
namespace {

std::string RandomInstance() {
  std::random_device device;
  std::mt19937_64 generator(
      (static_cast<uint64_t>(device()) << 32) ^ device() ^
      static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  return absl::StrFormat("%06x", generator() & 0xffffff);
}

}  // namespace

pnn::v1::ListWorkersResponse WorkerRegistry::Snapshot(absl::Time now) const {
  pnn::v1::ListWorkersResponse response;
  for (const Worker& worker : All()) {
    pnn::v1::WorkerStatus* status = response.add_workers();
    status->set_worker_id(worker.id);
    *status->mutable_info() = worker.info;
    *status->mutable_registered_time() = ToProtoTime(worker.registered);
    *status->mutable_last_heartbeat_time() =
        ToProtoTime(worker.last_heartbeat);
    if (worker.assignment.has_value()) {
      status->set_job_id(worker.assignment->job_id);
      status->set_task_index(worker.assignment->task_index);
    }
    status->set_deregistered(worker.draining);
    if (worker.unreachable_until > now) {
      *status->mutable_backed_off_until() =
          ToProtoTime(worker.unreachable_until);
    }
  }
  return response;
}

bool IsDialableAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  return colon != std::string::npos && colon != 0 &&
         absl::SimpleAtoi(address.substr(colon + 1), &port) && port > 0 &&
         port <= 65535;
}

WorkerRegistry::WorkerRegistry(Options options)
    : options_(std::move(options)), instance_(RandomInstance()) {}

absl::StatusOr<WorkerRegistry::Registered> WorkerRegistry::Register(
    const pnn::v1::WorkerInfo& info, absl::Time now) {
  if (!IsDialableAddress(info.address())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker.address: must be HOST:PORT that the coordinator can dial, "
        "got \"",
        info.address().substr(0, 256), "\""));
  }
  if (info.threads() < 0) {
    return absl::InvalidArgumentError("worker.threads: must be >= 0");
  }
  if (info.name().size() > 256 || info.device().size() > 64) {
    return absl::InvalidArgumentError(
        "worker.name: at most 256 bytes; worker.device: at most 64 bytes");
  }
  Registered registered;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = workers_.begin(); it != workers_.end(); ++it) {
    Worker& old = it->second;
    if (old.info.address() != info.address()) continue;
    if (old.assignment.has_value() &&
        now - old.last_heartbeat <= options_.worker_timeout) {
      return absl::AlreadyExistsError(absl::StrCat(
          "address ", info.address(), " is registered to ", old.id,
          ", which is alive and running a task; a restarted worker can "
          "register once that registration ends (its task's stream breaks, "
          "or it is silent for ",
          absl::FormatDuration(options_.worker_timeout),
          "). Check that every worker advertises its own address"));
    }
    // The same worker, restarted (or a stale entry): the old registration
    // ends here.
    registered.replaced = Ended{
        old.id, old.info.address(), old.assignment,
        absl::StrCat("worker ", old.id, " restarted and registered again")};
    workers_.erase(it);
    break;
  }
  Worker worker;
  worker.id = absl::StrCat("worker-", instance_, "-", next_number_++);
  worker.info = info;
  if (worker.info.device().empty()) worker.info.set_device("cpu");
  worker.registered = now;
  worker.last_heartbeat = now;
  auto backoff = backoffs_.find(info.address());
  if (backoff != backoffs_.end()) {
    worker.unreachable_until = backoff->second.until;
  }
  registered.response.set_worker_id(worker.id);
  registered.response.set_heartbeat_interval_ms(static_cast<int32_t>(
      absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  workers_.emplace(worker.id, std::move(worker));
  return registered;
}

absl::Status WorkerRegistry::Heartbeat(const std::string& worker_id,
                                       absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    // The id is not echoed at length: it comes from the caller.
    return absl::NotFoundError(
        absl::StrCat("worker \"", worker_id.substr(0, 64),
                     "\" is not registered here; register again"));
  }
  it->second.last_heartbeat = now;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<WorkerRegistry::Assignment>>
WorkerRegistry::Deregister(const std::string& worker_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "worker \"", worker_id.substr(0, 64), "\" is not registered here"));
  }
  std::optional<Assignment> assignment = it->second.assignment;
  if (assignment.has_value()) {
    // Its stream ends by itself as the worker stops (UNAVAILABLE); until
    // then liveness still watches it, in case it hangs instead.
    it->second.draining = true;
  } else {
    workers_.erase(it);
  }
  return assignment;
}

std::vector<WorkerRegistry::Ended> WorkerRegistry::ExpireSilent(
    absl::Time now) {
  std::vector<Ended> ended;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = workers_.begin(); it != workers_.end();) {
    const Worker& worker = it->second;
    if (now - worker.last_heartbeat <= options_.worker_timeout) {
      ++it;
      continue;
    }
    ended.push_back(
        {worker.id, worker.info.address(), worker.assignment,
         absl::StrCat("worker ", worker.id, " (", worker.info.address(),
                      ") sent no heartbeat for ",
                      absl::FormatDuration(now - worker.last_heartbeat))});
    it = workers_.erase(it);
  }
  return ended;
}

bool WorkerRegistry::Claim(const std::string& worker_id,
                           const Assignment& assignment) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.assignment.has_value() ||
      it->second.draining) {
    return false;
  }
  it->second.assignment = assignment;
  return true;
}

void WorkerRegistry::Release(const std::string& worker_id,
                             const Assignment& assignment) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || !it->second.assignment.has_value()) return;
  const Assignment& held = *it->second.assignment;
  if (held.job_id == assignment.job_id &&
      held.task_index == assignment.task_index) {
    it->second.assignment.reset();
    if (it->second.draining) workers_.erase(it);
  }
}

void WorkerRegistry::MarkUnreachable(const std::string& worker_id,
                                     absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  Backoff& backoff = backoffs_[it->second.info.address()];
  backoff.length = backoff.length == absl::ZeroDuration()
                       ? options_.initial_backoff
                       : std::min(2 * backoff.length, options_.max_backoff);
  backoff.until = now + backoff.length;
  it->second.unreachable_until = backoff.until;
}

void WorkerRegistry::MarkReachable(const std::string& worker_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  backoffs_.erase(it->second.info.address());
  it->second.unreachable_until = absl::InfinitePast();
}

std::vector<WorkerRegistry::Worker> WorkerRegistry::Available(
    absl::Time now) const {
  std::vector<Worker> available;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, worker] : workers_) {
    if (!worker.assignment.has_value() && !worker.draining &&
        worker.unreachable_until <= now) {
      available.push_back(worker);
    }
  }
  return available;
}

std::vector<WorkerRegistry::Worker> WorkerRegistry::All() const {
  std::vector<Worker> all;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, worker] : workers_) all.push_back(worker);
  return all;
}

WorkerRegistry::Counts WorkerRegistry::Count(absl::Time now) const {
  Counts counts;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, worker] : workers_) {
    ++counts.registered;
    const bool busy = worker.assignment.has_value();
    counts.busy += busy;
    counts.idle += !busy;
    counts.healthy +=
        now - worker.last_heartbeat <= 2 * options_.heartbeat_interval;
  }
  return counts;
}

int WorkerRegistry::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(workers_.size());
}

}  // namespace pnn
