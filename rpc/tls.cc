#include "rpc/tls.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace pnn {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream file(path);
  if (!file) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the TLS ", what, " file ", path));
  }
  std::stringstream content;
  content << file.rdbuf();
  if (content.str().find("-----BEGIN") == std::string::npos) {
    return absl::FailedPreconditionError(
        absl::StrCat("the TLS ", what, " file ", path, " is not PEM"));
  }
  return content.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, bool require_client_certificate) {
  if (files.cert.empty()) {
    if (!files.key.empty()) {
      return absl::InvalidArgumentError("a TLS key needs a certificate");
    }
    return grpc::InsecureServerCredentials();
  }
  auto cert = ReadPem(files.cert, "certificate");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(files.key, "key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options(
      files.ca.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : (require_client_certificate
                 ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY));
  if (!files.ca.empty()) {
    auto ca = ReadPem(files.ca, "CA");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
  }
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsFiles& files) {
  if (files.ca.empty() && files.cert.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions options;
  if (!files.ca.empty()) {
    auto ca = ReadPem(files.ca, "CA");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
  }
  if (!files.cert.empty()) {
    auto cert = ReadPem(files.cert, "certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(files.key, "key");
    if (!key.ok()) return key.status();
    options.pem_cert_chain = *cert;
    options.pem_private_key = *key;
  }
  return grpc::SslCredentials(options);
}

}  // namespace pnn
