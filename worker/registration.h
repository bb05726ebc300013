// Keeps a worker registered with the coordinator: RegisterWorker at start
// (retrying with exponential backoff while the coordinator is unreachable),
// then a Heartbeat every heartbeat_interval_ms with the busy flag, and a
// fresh RegisterWorker when a heartbeat gets NOT_FOUND (the coordinator
// restarted or declared this worker lost).
//
// Runs on its own thread between Start() and Stop(); Stop() interrupts a
// pending RPC or wait and joins. Thread-safe. Failures are logged to stderr
// and retried, never returned: a worker outlives coordinator restarts.
#ifndef PNN_WORKER_REGISTRATION_H_
#define PNN_WORKER_REGISTRATION_H_

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "pnn/v1/coordinator.grpc.pb.h"
#include "rpc/tls.h"

namespace pnn {
namespace worker {

struct RegistrationOptions {
  std::string coordinator;  // HOST:PORT
  pnn::v1::WorkerInfo worker;
  // Whether the worker is training now; called on the registration thread.
  std::function<bool()> busy;
  int initial_retry_ms = 250;
  int max_retry_ms = 10000;
  int rpc_timeout_ms = 5000;
  // Used when the coordinator answers heartbeat_interval_ms <= 0.
  int default_heartbeat_interval_ms = 5000;
  // Sent with every call (rpc/auth.h); empty: none.
  std::string auth_token;
  // TLS for the channel to the coordinator; empty: plaintext.
  TlsFiles tls;
};

class CoordinatorRegistration {
 public:
  explicit CoordinatorRegistration(RegistrationOptions options);
  ~CoordinatorRegistration();  // Stop()
  CoordinatorRegistration(const CoordinatorRegistration&) = delete;
  CoordinatorRegistration& operator=(const CoordinatorRegistration&) = delete;

  void Start();
  // Idempotent; returns once the thread has exited, after telling the
  // coordinator that this worker stops (DeregisterWorker, best effort).
  void Stop();

  // The id the coordinator gave this worker; empty while unregistered.
  std::string worker_id() const;
  // How many RegisterWorker calls succeeded (> 1 after re-registration).
  int registrations() const;

 private:
  // The registration thread's own state between calls.
  struct LoopState;

  void Loop();
  // One RegisterWorker call; on failure, the backoff wait after it. False
  // when stopping.
  bool Register(LoopState& state);
  // One Heartbeat after the interval; a NOT_FOUND answer forgets the id,
  // so that the next round registers again. False when stopping.
  bool Heartbeat(LoopState& state);
  void Deregister();
  // Waits up to `ms` or until Stop(); false when stopping.
  bool SleepFor(int64_t ms);
  // Runs one RPC with a deadline, cancellable by Stop().
  template <typename Call>
  grpc::Status Invoke(Call&& call);

  const RegistrationOptions options_;
  std::unique_ptr<pnn::v1::Coordinator::Stub> stub_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;                       // guarded by mutex_
  grpc::ClientContext* active_call_ = nullptr;  // guarded by mutex_
  std::string worker_id_;                       // guarded by mutex_
  int registrations_ = 0;                       // guarded by mutex_
  std::thread thread_;
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_REGISTRATION_H_
