// The pnnctl commands: each one calls the coordinator, writes results to
// `out` and errors to `err`, and returns the process exit status (see
// exit_codes.h). Flags are read only in main.cc; these take options.
//
// Commands are synchronous and create their own channel to
// ClientOptions::coordinator; they are safe to call from several threads
// with different streams.
#ifndef PNN_CLIENT_COMMANDS_H_
#define PNN_CLIENT_COMMANDS_H_

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/format.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/coordinator.pb.h"
#include "rpc/tls.h"

namespace grpc {
class ClientContext;
class Status;
}  // namespace grpc

namespace pnn::client {

// The usage text `pnnctl help` prints, exit statuses included.
extern const char kUsage[];

inline constexpr char kDefaultCoordinator[] = "localhost:50051";

enum class OutputFormat { kTable, kJson };

struct ClientOptions {
  // host:port of the coordinator's gRPC server.
  std::string coordinator = kDefaultCoordinator;
  OutputFormat output = OutputFormat::kTable;
  // Deadline of unary calls; streams (watch, download) have none, since a
  // job may train for hours. absl::InfiniteDuration(): no deadline.
  absl::Duration timeout = absl::Seconds(30);
  // Redraw the watch display in place (stdout is a terminal).
  bool redraw = false;
  // Bearer token sent with every call (rpc/auth.h); empty: none.
  std::string auth_token;
  // TLS towards the coordinator (rpc/tls.h); empty: plaintext.
  TlsFiles tls;
  FormatOptions format;
};

struct ListOptions {
  std::vector<pnn::v1::JobState> states;  // empty: all
  int32_t page_size = 0;                  // 0: the coordinator's default
  std::string page_token;
  bool all = false;  // follow next_page_token to the end
};

struct DownloadOptions {
  std::string job_id;
  // Destination; empty: the file name the coordinator suggests (its last
  // path component only), else "<job id>.safetensors" / "<job id>.pnn".
  std::string path;
  pnn::v1::ModelFormat format = pnn::v1::MODEL_FORMAT_SAFETENSORS;
};

// Submits and prints the job id alone (table) or the SubmitJobResponse
// (json); with `watch`, then follows the job as RunWatch does.
int RunSubmit(const ClientOptions& options,
              const pnn::v1::SubmitJobRequest& request, bool watch,
              std::ostream& out, std::ostream& err);

// Prints one job. Exit 0 whatever the job's state.
int RunGet(const ClientOptions& options, const std::string& job_id,
           std::ostream& out, std::ostream& err);

int RunList(const ClientOptions& options, const ListOptions& list,
            std::ostream& out, std::ostream& err);

// Follows a job until it ends: live progress, then the result table (table)
// or one JobEvent per line (json). Exit 0, 3 or 4 by the final state.
int RunWatch(const ClientOptions& options, const std::string& job_id,
             std::ostream& out, std::ostream& err);

int RunCancel(const ClientOptions& options, const std::string& job_id,
              std::ostream& out, std::ostream& err);

// Streams the model into `path`.tmp and renames it into place only once
// every byte has arrived, so a failed download never leaves a truncated
// model under the final name.
int RunDownload(const ClientOptions& options, const DownloadOptions& download,
                std::ostream& out, std::ostream& err);

// grpc.health.v1.Health/Check for `service` ("" is the server as a whole).
// Exit 0 when SERVING, 2 otherwise.
int RunHealth(const ClientOptions& options, const std::string& service,
              std::ostream& out, std::ostream& err);

// For the Run* functions (here and in cluster_commands.h): a stub for the
// coordinator the options name (their TLS files are checked already).
std::unique_ptr<pnn::v1::Coordinator::Stub> NewStub(
    const ClientOptions& options);
// Attaches the
// token and, with `deadline`, options.timeout to a call's context (streams
// that last as long as a job pass false).
void PrepareCall(const ClientOptions& options, bool deadline,
                 grpc::ClientContext* context);
// Prints the failed RPC's error for people; returns kExitRpcError.
int RpcFailure(const ClientOptions& options, const grpc::Status& status,
               absl::string_view rpc, std::ostream& err);

}  // namespace pnn::client

#endif  // PNN_CLIENT_COMMANDS_H_
