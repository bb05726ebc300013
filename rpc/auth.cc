#include "rpc/auth.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace pnn {
namespace {

constexpr char kMetadataKey[] = "authorization";
constexpr char kScheme[] = "Bearer ";

// Equal strings in time that depends only on their lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return difference == 0;
}

}  // namespace

absl::StatusOr<std::string> LoadAuthToken(const std::string& token_file) {
  if (token_file.empty()) {
    const char* value = std::getenv(kAuthTokenEnvironment);
    return value == nullptr ? std::string()
                            : std::string(absl::StripAsciiWhitespace(value));
  }
  std::ifstream file(token_file);
  if (!file) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the token file ", token_file));
  }
  std::stringstream content;
  content << file.rdbuf();
  std::string token(absl::StripAsciiWhitespace(content.str()));
  if (token.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the token file ", token_file, " is empty"));
  }
  return token;
}

void AttachAuthToken(const std::string& token, grpc::ClientContext* context) {
  if (!token.empty()) context->AddMetadata(kMetadataKey, kScheme + token);
}

absl::Status CheckAuthToken(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
    const std::string& expected) {
  if (expected.empty()) return absl::OkStatus();
  auto it = metadata.find(kMetadataKey);
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "this pnn service requires a token: pass --token_file or set "
        "PNN_AUTH_TOKEN");
  }
  const absl::string_view presented(it->second.data(), it->second.size());
  if (!ConstantTimeEquals(presented, kScheme + expected)) {
    return absl::UnauthenticatedError("the presented token is not valid");
  }
  return absl::OkStatus();
}

}  // namespace pnn
