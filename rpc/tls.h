// Optional TLS for pnn's gRPC endpoints, from PEM files. Without a
// certificate the services listen in plaintext; with one they serve TLS;
// with a CA as well, workers require a client certificate signed by it
// (mutual TLS), so only the coordinator, which holds such a certificate,
// can hand them work. scripts/make-test-ca creates a CA and certificates.
#ifndef PNN_RPC_TLS_H_
#define PNN_RPC_TLS_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace pnn {

struct TlsFiles {
  std::string cert;  // this process's certificate chain (PEM)
  std::string key;   // its private key (PEM)
  std::string ca;    // CA certificate(s) to verify the peer (PEM)
};

// Plaintext when `files.cert` is empty. Otherwise TLS with cert/key; when
// `files.ca` is set, client certificates are verified against it, and
// required when `require_client_certificate`. Errors name the unreadable
// file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, bool require_client_certificate);

// Plaintext when `files.ca` and `files.cert` are empty. Otherwise TLS that
// verifies the server against `files.ca` (the system roots when empty) and
// presents cert/key when given (mutual TLS).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsFiles& files);

}  // namespace pnn

#endif  // PNN_RPC_TLS_H_
