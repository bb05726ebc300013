// pnnctl: the command-line client of the pnn coordinator. Only flag parsing
// and dispatch live here; the commands are in commands.h.
//
//   pnnctl submit examples/fashion_mnist.json --epochs 2 --watch
//   pnnctl list --state running,queued
//   pnnctl download JOB_ID -o model.safetensors
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "rpc/auth.h"
#include "rpc/tls.h"
#include "client/exit_codes.h"
#include "client/job_request.h"

// Global.
ABSL_FLAG(std::string, coordinator, "",
          "host:port of the coordinator (default: $PNN_COORDINATOR, else "
          "localhost:50051).");
ABSL_FLAG(std::string, output, "table", "table or json.");
ABSL_FLAG(std::string, tls_ca, "",
          "Connect with TLS, verifying the coordinator against this CA.");
ABSL_FLAG(std::string, tls_cert, "", "Client certificate (PEM), optional.");
ABSL_FLAG(std::string, tls_key, "", "Private key of --tls_cert.");
ABSL_FLAG(std::string, token_file, "",
          "File holding the coordinator's bearer token (default: "
          "$PNN_AUTH_TOKEN).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30),
          "Deadline of unary calls, e.g. 30s or 2m.");

// submit.
ABSL_FLAG(bool, watch, false, "submit: follow the job to its end.");
ABSL_FLAG(int32_t, epochs, 0, "submit: epochs per segment.");
ABSL_FLAG(int32_t, train_limit, 0,
          "submit: use the first N training samples (0: all).");
ABSL_FLAG(int32_t, test_limit, 0,
          "submit: use the first N test samples (0: all).");
ABSL_FLAG(std::string, hidden_widths, "",
          "submit: comma-separated hidden layer widths.");
ABSL_FLAG(std::string, cut_after, "",
          "submit: comma-separated linear layers to cut after.");
ABSL_FLAG(double, kappa, 1.0, "submit: SIL scale kappa.");
ABSL_FLAG(uint64_t, seed, 1, "submit: job seed.");
ABSL_FLAG(std::string, dataset, "",
          "submit: dataset.path, relative to the workers' data directory.");
ABSL_FLAG(int32_t, recovery_epochs, 0,
          "submit: end-to-end epochs on the joined network.");
ABSL_FLAG(std::string, device, "", "submit: cpu, cuda or cuda:N.");
ABSL_FLAG(std::string, name, "", "submit: a label for people.");
ABSL_FLAG(std::string, parallelism, "",
          "submit: partitioned (SIL segments, the default), model_parallel "
          "(pipeline over one worker per segment) or conventional (the whole "
          "network on one worker).");
ABSL_FLAG(int32_t, evaluations_per_epoch, 0,
          "submit: test-set evaluations per epoch for the accuracy-over-time "
          "curve (0-20).");
ABSL_FLAG(bool, baseline, false,
          "submit: also train the unsplit network conventionally.");

// list.
ABSL_FLAG(std::string, state, "",
          "list: comma-separated states (queued, running, assembling, "
          "succeeded, failed, cancelled).");
ABSL_FLAG(int32_t, page_size, 0, "list: jobs per page (0: server default).");
ABSL_FLAG(std::string, page_token, "", "list: token of the page to show.");
ABSL_FLAG(bool, all, false, "list: follow every page.");

// download.
ABSL_FLAG(std::string, o, "", "download: output file.");
ABSL_FLAG(std::string, format, "safetensors", "download: safetensors or pnn.");

namespace {

using pnn::client::kExitUsage;

// Which commands accept each command-specific flag; global flags are not
// listed. A flag given to another command is a mistake worth reporting
// rather than ignoring (e.g. `pnnctl get ID --epochs 3`).
const std::map<std::string, std::string>& FlagCommands() {
  static const auto* const kFlags = new std::map<std::string, std::string>{
      {"watch", "submit"},
      {"epochs", "submit"},
      {"train_limit", "submit"},
      {"test_limit", "submit"},
      {"hidden_widths", "submit"},
      {"cut_after", "submit"},
      {"kappa", "submit"},
      {"seed", "submit"},
      {"dataset", "submit"},
      {"recovery_epochs", "submit"},
      {"device", "submit"},
      {"name", "submit"},
      {"baseline", "submit"},
      {"parallelism", "submit"},
      {"evaluations_per_epoch", "submit"},
      {"state", "list"},
      {"page_size", "list"},
      {"page_token", "list"},
      {"all", "list"},
      {"o", "download"},
      {"format", "download"},
  };
  return *kFlags;
}

// Names of the flags written on the command line. Abseil does not expose
// whether a flag was given, and a default value cannot tell "--train_limit
// 0" (all samples) from no flag at all.
std::set<std::string> GivenFlags(int argc, char** argv) {
  std::set<std::string> given;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "-")) continue;
    absl::ConsumePrefix(&arg, "-");
    arg = arg.substr(0, arg.find('='));
    std::string name(arg);
    if (FlagCommands().count(name) == 0 && absl::StartsWith(name, "no")) {
      name = name.substr(2);  // --nobaseline
    }
    given.insert(name);
  }
  return given;
}

int Usage(std::ostream& stream, int code) {
  // Abseil's --help prints "pnnctl: " before the same text.
  stream << "pnnctl: " << pnn::client::kUsage;
  return code;
}

int UsageError(const std::string& message) {
  std::cerr << "pnnctl: " << message << "\n"
            << "run `pnnctl help` for usage\n";
  return kExitUsage;
}

pnn::client::SpecOverrides Overrides(const std::set<std::string>& given) {
  pnn::client::SpecOverrides overrides;
  auto has = [&](const char* name) { return given.count(name) > 0; };
  if (has("epochs")) overrides.epochs = absl::GetFlag(FLAGS_epochs);
  if (has("train_limit")) {
    overrides.train_limit = absl::GetFlag(FLAGS_train_limit);
  }
  if (has("test_limit")) overrides.test_limit = absl::GetFlag(FLAGS_test_limit);
  if (has("hidden_widths")) {
    overrides.hidden_widths = absl::GetFlag(FLAGS_hidden_widths);
  }
  if (has("cut_after")) overrides.cut_after = absl::GetFlag(FLAGS_cut_after);
  if (has("kappa")) overrides.kappa = absl::GetFlag(FLAGS_kappa);
  if (has("seed")) overrides.seed = absl::GetFlag(FLAGS_seed);
  if (has("dataset")) overrides.dataset = absl::GetFlag(FLAGS_dataset);
  if (has("recovery_epochs")) {
    overrides.recovery_epochs = absl::GetFlag(FLAGS_recovery_epochs);
  }
  if (has("device")) overrides.device = absl::GetFlag(FLAGS_device);
  if (has("name")) overrides.name = absl::GetFlag(FLAGS_name);
  if (has("baseline")) overrides.baseline = absl::GetFlag(FLAGS_baseline);
  if (has("parallelism")) {
    overrides.parallelism = absl::GetFlag(FLAGS_parallelism);
  }
  if (has("evaluations_per_epoch")) {
    overrides.evaluations_per_epoch = absl::GetFlag(FLAGS_evaluations_per_epoch);
  }
  return overrides;
}

int TerminalWidth() {
  struct winsize size {};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) {
    return size.ws_col;
  }
  return 80;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(pnn::client::kUsage);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  // positional[0] is the program itself.
  if (positional.size() < 2) return Usage(std::cerr, kExitUsage);
  const std::string command = positional[1];
  const std::vector<std::string> args(positional.begin() + 2, positional.end());
  if (command == "help" || command == "--help") return Usage(std::cout, 0);

  static const std::set<std::string> kCommands = {
      "submit", "get", "list", "watch", "cancel", "download", "health"};
  if (kCommands.count(command) == 0) {
    return UsageError(
        absl::StrCat("unknown command '", command,
                     "'; commands: ", absl::StrJoin(kCommands, ", ")));
  }
  const std::set<std::string> given = GivenFlags(argc, argv);
  for (const std::string& flag : given) {
    auto it = FlagCommands().find(flag);
    if (it != FlagCommands().end() && it->second != command) {
      return UsageError(absl::StrCat("--", flag, " applies to `pnnctl ",
                                     it->second, "`, not to `pnnctl ", command,
                                     "`"));
    }
  }

  pnn::client::ClientOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  if (options.coordinator.empty()) {
    const char* env = std::getenv("PNN_COORDINATOR");
    options.coordinator =
        env != nullptr && *env != '\0' ? env : pnn::client::kDefaultCoordinator;
  }
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output == "json") {
    options.output = pnn::client::OutputFormat::kJson;
  } else if (output != "table") {
    return UsageError(
        absl::StrCat("--output=", output, ": expected table or json"));
  }
  options.timeout = absl::GetFlag(FLAGS_timeout);
  auto token = pnn::LoadAuthToken(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return UsageError(std::string(token.status().message()));
  options.auth_token = *token;
  options.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                 absl::GetFlag(FLAGS_tls_ca)};
  if (auto credentials = pnn::MakeChannelCredentials(options.tls);
      !credentials.ok()) {
    return UsageError(std::string(credentials.status().message()));
  }
  const char* term = std::getenv("TERM");
  options.redraw = ::isatty(STDOUT_FILENO) &&
                   (term == nullptr || std::string(term) != "dumb");
  if (options.redraw) options.format.width = TerminalWidth();

  auto expect_args = [&](size_t min, size_t max, const char* synopsis) {
    if (args.size() < min || args.size() > max) {
      return UsageError(absl::StrCat("usage: pnnctl ", synopsis));
    }
    return 0;
  };
  std::ostream& out = std::cout;
  std::ostream& err = std::cerr;

  if (command == "submit") {
    if (int code = expect_args(0, 1, "submit [JOB.json] [FLAGS]")) return code;
    const pnn::client::SpecOverrides overrides = Overrides(given);
    if (args.empty() && !overrides.any()) {
      // An empty spec is valid (all defaults) but rarely meant; say so.
      std::cerr << "pnnctl: no JOB.json and no spec flags: submitting the "
                   "default job (the paper's network on fashion-mnist)\n";
    }
    absl::StatusOr<pnn::v1::SubmitJobRequest> request =
        pnn::client::BuildSubmitRequest(args.empty() ? "" : args[0], overrides);
    if (!request.ok()) {
      std::cerr << "pnnctl: " << request.status().message() << "\n";
      return kExitUsage;
    }
    return pnn::client::RunSubmit(options, *request, absl::GetFlag(FLAGS_watch),
                                  out, err);
  }
  if (command == "get") {
    if (int code = expect_args(1, 1, "get JOB_ID")) return code;
    return pnn::client::RunGet(options, args[0], out, err);
  }
  if (command == "list") {
    if (int code = expect_args(0, 0, "list [--state=S,...] [--all]")) {
      return code;
    }
    pnn::client::ListOptions list;
    absl::StatusOr<std::vector<pnn::v1::JobState>> states =
        pnn::client::ParseStateList(absl::GetFlag(FLAGS_state));
    if (!states.ok()) return UsageError(std::string(states.status().message()));
    list.states = *states;
    list.page_size = absl::GetFlag(FLAGS_page_size);
    if (list.page_size < 0) {
      return UsageError("--page_size: expected a positive number");
    }
    list.page_token = absl::GetFlag(FLAGS_page_token);
    list.all = absl::GetFlag(FLAGS_all);
    return pnn::client::RunList(options, list, out, err);
  }
  if (command == "watch") {
    if (int code = expect_args(1, 1, "watch JOB_ID")) return code;
    return pnn::client::RunWatch(options, args[0], out, err);
  }
  if (command == "cancel") {
    if (int code = expect_args(1, 1, "cancel JOB_ID")) return code;
    return pnn::client::RunCancel(options, args[0], out, err);
  }
  if (command == "download") {
    if (int code =
            expect_args(1, 1, "download JOB_ID [-o FILE] [--format=F]")) {
      return code;
    }
    pnn::client::DownloadOptions download;
    download.job_id = args[0];
    download.path = absl::GetFlag(FLAGS_o);
    absl::StatusOr<pnn::v1::ModelFormat> format =
        pnn::client::ParseModelFormat(absl::GetFlag(FLAGS_format));
    if (!format.ok()) return UsageError(std::string(format.status().message()));
    download.format = *format;
    return pnn::client::RunDownload(options, download, out, err);
  }
  // health
  if (int code = expect_args(0, 1, "health [SERVICE]")) return code;
  return pnn::client::RunHealth(options, args.empty() ? "" : args[0], out, err);
}
