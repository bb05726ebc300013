#include "client/cli.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "client/cluster_commands.h"
#include "client/commands.h"
#include "client/exit_codes.h"
#include "client/job_request.h"
#include "rpc/auth.h"
#include "rpc/tls.h"

namespace pnn::client {
namespace {

// Every value the command line can set; one per process, so the commands
// share the fields of their common flags (-o, positional ID).
struct Flags {
  // Global.
  std::string coordinator;
  std::string output;  // before the command: --output=json
  std::string tls_ca, tls_cert, tls_key, token_file;
  std::string timeout = "30s";
  // The command's own -o/--output (download: the output file).
  std::string command_output;
  // Positionals.
  std::string file, job_id, service, topic;
  // submit.
  bool watch = false;
  int32_t epochs = 0, train_limit = 0, test_limit = 0, recovery_epochs = 0;
  int32_t evaluations_per_epoch = 0;
  int32_t micro_batches = 0;
  std::string schedule;
  std::string precision;
  std::string hidden_widths, cut_after, dataset, device, name, parallelism;
  double kappa = 1.0;
  uint64_t seed = 1;
  bool baseline = false;
  // list.
  std::string state, page_token;
  int32_t page_size = 0;
  bool all = false;
  // download.
  std::string format = "safetensors";
  // logs.
  bool follow = false;
};

// Global flags that take a value, as written before the command.
const std::set<std::string>& RootValueFlags() {
  static const auto* const kFlags = new std::set<std::string>{
      "--coordinator", "--output",     "--tls-ca", "--tls-cert",
      "--tls-key",     "--token-file", "--timeout"};
  return *kFlags;
}

// The one-line synopsis a usage error repeats.
const std::map<std::string, std::string>& Synopses() {
  static const auto* const kSynopses = new std::map<std::string, std::string>{
      {"submit", "submit [JOB.json] [--epochs N ...] [--watch] [-o json]"},
      {"get", "get ID [-o json]"},
      {"list", "list [--state S,...] [--page-size N] [--all] [-o json]"},
      {"watch", "watch ID [-o json]"},
      {"cancel", "cancel ID [-o json]"},
      {"download", "download ID [-o FILE] [--format safetensors|pnn]"},
      {"health", "health [SERVICE] [-o json]"},
      {"workers", "workers [-o json]"},
      {"logs", "logs ID [-f] [-o json]"},
      {"help", "help [COMMAND]"},
  };
  return *kSynopses;
}

bool LooksLikeNumber(absl::string_view token) {
  double value;
  return absl::SimpleAtod(token, &value);
}

class Cli {
 public:
  Cli(const CliEnvironment& env, std::ostream& out, std::ostream& err)
      : env_(env), out_(out), err_(err), app_("pnnctl", "pnnctl") {}

  int Run(const std::vector<std::string>& raw_args);

 private:
  void AddGlobalFlags();
  CLI::App* AddCommand(const std::string& name, const std::string& summary,
                       bool output_flag = true);
  void AddSubmit();
  void AddListAndJobCommands();
  void AddOtherCommands();

  // The index of the command among `args_`, or -1.
  int CommandIndex() const;
  std::string CommandName() const;
  CLI::App* Command(const std::string& name) const;
  int Help(const std::string& topic, std::ostream& stream, int code) const;
  int ParseFailure(const CLI::ParseError& error) const;
  std::string UnknownFlagMessage(const std::string& command) const;
  std::string DescribeUnknownFlag(const std::string& flag,
                                  const std::string& command) const;
  int UsageError(const std::string& message, const std::string& command) const;

  std::string ClientOptionsError(const std::string& command,
                                 ClientOptions* options) const;
  std::string SpecOverridesError(SpecOverrides* overrides) const;
  bool Given(const std::string& command, const std::string& flag) const;
  int Dispatch(const std::string& command);
  int DispatchSubmit(const ClientOptions& options);
  int DispatchList(const ClientOptions& options);
  int DispatchDownload(const ClientOptions& options);

  const CliEnvironment& env_;
  std::ostream& out_;
  std::ostream& err_;
  CLI::App app_;
  Flags flags_;
  std::vector<std::string> args_;  // normalized
};

void Cli::AddGlobalFlags() {
  app_.fallthrough();
  app_.require_subcommand(1);
  app_.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app_.get_formatter()->column_width(34);
  app_.add_option("--coordinator", flags_.coordinator,
                  "host:port of the coordinator (default: $PNN_COORDINATOR, "
                  "else localhost:50051)");
  app_.add_option("--output", flags_.output,
                  "table or json, for every command (also -o after it)");
  app_.add_option("--tls-ca", flags_.tls_ca,
                  "connect with TLS, verifying the coordinator against this "
                  "CA (PEM)");
  app_.add_option("--tls-cert", flags_.tls_cert,
                  "client certificate (PEM), optional");
  app_.add_option("--tls-key", flags_.tls_key, "private key of --tls-cert");
  app_.add_option("--token-file", flags_.token_file,
                  "file holding the coordinator's bearer token (default: "
                  "$PNN_AUTH_TOKEN)");
  app_.add_option("--timeout", flags_.timeout,
                  "deadline of unary calls, e.g. 30s or 2m (default 30s)");
}

CLI::App* Cli::AddCommand(const std::string& name, const std::string& summary,
                          bool output_flag) {
  CLI::App* command = app_.add_subcommand(name, summary);
  command->footer(
      "Global flags (--coordinator, --tls-ca, --token-file, --timeout, ...) "
      "go before or after the command: see `pnnctl --help`.");
  if (output_flag) {
    command->add_option("-o,--output", flags_.command_output,
                        "table (default) or json");
  }
  return command;
}

void Cli::AddSubmit() {
  CLI::App* submit = AddCommand(
      "submit",
      "Submit a job and print its id. JOB.json is protobuf JSON of a "
      "pnn.v1.JobSpec or of a pnn.v1.SubmitJobRequest; the flags override "
      "its fields, or build a spec without a file.");
  submit->add_option("JOB.json", flags_.file, "the job spec file");
  submit->add_flag("--watch,!--no-watch", flags_.watch,
                   "then follow the job as `pnnctl watch` does");
  submit->add_option("--epochs", flags_.epochs, "epochs per segment (>= 1)");
  submit->add_option("--train-limit", flags_.train_limit,
                     "use the first N training samples (0: all)");
  submit->add_option("--test-limit", flags_.test_limit,
                     "use the first N test samples (0: all)");
  submit->add_option("--hidden-widths", flags_.hidden_widths,
                     "comma-separated hidden layer widths, e.g. 512,256");
  submit->add_option("--cut-after", flags_.cut_after,
                     "comma-separated linear layers to cut after, e.g. 2,4");
  submit->add_option("--kappa", flags_.kappa, "SIL scale kappa (> 0)");
  submit->add_option("--seed", flags_.seed, "job seed");
  submit->add_option("--dataset", flags_.dataset,
                     "dataset.path, relative to the workers' data directory");
  submit->add_option("--recovery-epochs", flags_.recovery_epochs,
                     "end-to-end epochs on the joined network (0: none)");
  submit->add_option("--device", flags_.device, "cpu, cuda or cuda:N");
  submit->add_option("--name", flags_.name, "a label for people");
  submit->add_option("--parallelism", flags_.parallelism,
                     "partitioned (default), model_parallel or conventional");
  submit->add_option("--evaluations-per-epoch", flags_.evaluations_per_epoch,
                     "test-set evaluations per epoch for the "
                     "accuracy-over-time curve (0-20)");
  submit->add_option("--micro-batches", flags_.micro_batches,
                     "model_parallel: micro-batches per batch (default 4 x "
                     "stages)");
  submit->add_option("--schedule", flags_.schedule,
                     "model_parallel: gpipe (default) or 1f1b");
  submit->add_option("--precision", flags_.precision,
                     "training arithmetic: fp32 (default), bf16 (autocast) "
                     "or tf32 (CUDA only)");
  submit->add_flag("--baseline,!--no-baseline", flags_.baseline,
                   "also train the unsplit network conventionally");
}

void Cli::AddListAndJobCommands() {
  CLI::App* list = AddCommand("list", "List jobs, newest first.");
  list->add_option("--state", flags_.state,
                   "comma-separated states: queued, running, assembling, "
                   "succeeded, failed, cancelled");
  list->add_option("--page-size", flags_.page_size,
                   "jobs per page (>= 1; default: the coordinator's)");
  list->add_option("--page-token", flags_.page_token,
                   "token of the page to show");
  list->add_flag("--all,!--no-all", flags_.all, "follow every page");
  AddCommand("get", "Show a job: state, progress, or results once it ended.")
      ->add_option("ID", flags_.job_id, "job id")
      ->required();
  AddCommand("watch",
             "Follow a job: a progress bar per segment until it ends, then "
             "its result table.")
      ->add_option("ID", flags_.job_id, "job id")
      ->required();
  AddCommand("cancel", "Cancel a job that has not ended.")
      ->add_option("ID", flags_.job_id, "job id")
      ->required();
  CLI::App* download = AddCommand(
      "download", "Save the trained model of a succeeded job.", false);
  download->add_option("ID", flags_.job_id, "job id")->required();
  download->add_option("-o,--output", flags_.command_output,
                       "output file (default: the name the coordinator "
                       "suggests)");
  download->add_option("--format", flags_.format,
                       "safetensors (default) or pnn");
}

void Cli::AddOtherCommands() {
  AddCommand("workers",
             "List the workers the coordinator knows: state, job, last "
             "heartbeat.");
  CLI::App* logs = AddCommand(
      "logs", "Print a job's log (time and message per line), oldest first.");
  logs->add_option("ID", flags_.job_id, "job id")->required();
  logs->add_flag("-f,--follow", flags_.follow,
                 "then print the job's events as they come until it ends");
  AddCommand("health",
             "Standard gRPC health check of the coordinator or of one of "
             "its services.")
      ->add_option("SERVICE", flags_.service, "service name; default: all");
  AddCommand("help", "Print the usage, or a command's flags.", false)
      ->add_option("COMMAND", flags_.topic, "a command");
}

int Cli::CommandIndex() const {
  for (size_t i = 0; i < args_.size(); ++i) {
    const std::string& arg = args_[i];
    if (arg == "--") return -1;
    if (absl::StartsWith(arg, "-")) {
      if (RootValueFlags().count(arg) > 0) ++i;  // its value
      continue;
    }
    return static_cast<int>(i);
  }
  return -1;
}

std::string Cli::CommandName() const {
  const int index = CommandIndex();
  return index < 0 ? "" : args_[index];
}

CLI::App* Cli::Command(const std::string& name) const {
  if (name.empty()) return nullptr;
  try {
    return app_.get_subcommand(name);
  } catch (const CLI::OptionNotFound&) {
    return nullptr;
  }
}

int Cli::Help(const std::string& topic, std::ostream& stream, int code) const {
  CLI::App* command = topic.empty() ? nullptr : Command(topic);
  if (command == nullptr) {
    stream << "pnnctl: " << kUsage;
  } else {
    stream << command->help("pnnctl");
  }
  return code;
}

int Cli::UsageError(const std::string& message,
                    const std::string& command) const {
  err_ << "pnnctl: " << message << "\n";
  auto synopsis = Synopses().find(command);
  if (synopsis != Synopses().end()) {
    err_ << "usage: pnnctl " << synopsis->second << "\n"
         << "run `pnnctl " << command << " --help` for its flags\n";
  } else {
    err_ << "run `pnnctl --help` for usage\n";
  }
  return kExitUsage;
}

std::string Cli::DescribeUnknownFlag(const std::string& flag,
                                     const std::string& command) const {
  const std::string where =
      command.empty() ? "pnnctl" : absl::StrCat("pnnctl ", command);
  for (const CLI::App* other :
       app_.get_subcommands([](const CLI::App*) { return true; })) {
    if (other->get_name() != command &&
        other->get_option_no_throw(flag) != nullptr) {
      return absl::StrCat(flag, " applies to `pnnctl ", other->get_name(),
                          "`, not to `", where, "`");
    }
  }
  std::vector<std::string> names;
  std::vector<const CLI::App*> apps = {&app_};
  if (const CLI::App* sub = Command(command)) apps.push_back(sub);
  for (const CLI::App* app : apps) {
    for (const CLI::Option* option : app->get_options()) {
      for (const std::string& name : option->get_lnames()) {
        names.push_back("--" + name);
      }
    }
  }
  std::string message =
      absl::StrCat("unknown flag ", flag, " for `", where, "`");
  const std::string nearest = NearestName(flag, names);
  if (!nearest.empty())
    absl::StrAppend(&message, "; did you mean ", nearest, "?");
  return message;
}

// Names the first flag on the command line that neither the command nor
// the global flags know; "" if there is none.
std::string Cli::UnknownFlagMessage(const std::string& command) const {
  const CLI::App* sub = Command(command);
  for (size_t i = 0; i < args_.size(); ++i) {
    const std::string& arg = args_[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-' || LooksLikeNumber(arg)) continue;
    const std::string flag = arg.substr(0, arg.find('='));
    const CLI::Option* option = nullptr;
    if (sub != nullptr) option = sub->get_option_no_throw(flag);
    if (option == nullptr) option = app_.get_option_no_throw(flag);
    if (option == nullptr) return DescribeUnknownFlag(flag, command);
    // Skip a separate value, so that it is not taken for a flag.
    if (option->get_type_size() != 0 && flag == arg) ++i;
  }
  return "";
}

int Cli::ParseFailure(const CLI::ParseError& error) const {
  const std::string command = CommandName();
  if (command.empty()) {
    if (const std::string unknown = UnknownFlagMessage(""); !unknown.empty()) {
      return UsageError(unknown, "");
    }
    return Help("", err_, kExitUsage);
  }
  if (Command(command) == nullptr) {
    std::vector<std::string> names;
    for (const CLI::App* sub :
         app_.get_subcommands([](const CLI::App*) { return true; })) {
      names.push_back(sub->get_name());
    }
    std::string message = absl::StrCat("unknown command '", command, "'");
    const std::string nearest = NearestName(command, names);
    if (!nearest.empty())
      absl::StrAppend(&message, "; did you mean '", nearest, "'?");
    absl::StrAppend(&message, " commands: ", absl::StrJoin(names, ", "));
    return UsageError(message, "");
  }
  if (const std::string unknown = UnknownFlagMessage(command);
      !unknown.empty()) {
    return UsageError(unknown, command);
  }
  if (error.get_name() == "ExtrasError") {
    return UsageError(absl::StrCat("too many arguments: ", error.what()),
                      command);
  }
  return UsageError(error.what(), command);
}

bool Cli::Given(const std::string& command, const std::string& flag) const {
  const CLI::App* sub = Command(command);
  const CLI::Option* option =
      sub == nullptr ? nullptr : sub->get_option_no_throw(flag);
  return option != nullptr && option->count() > 0;
}

std::string Cli::ClientOptionsError(const std::string& command,
                                    ClientOptions* options) const {
  options->coordinator = flags_.coordinator;
  if (options->coordinator.empty()) options->coordinator = env_.coordinator;
  if (options->coordinator.empty()) options->coordinator = kDefaultCoordinator;
  std::string output = flags_.output;
  if (command != "download" && Given(command, "--output")) {
    output = flags_.command_output;
  }
  const std::string format = absl::AsciiStrToLower(output);
  if (format == "json") {
    options->output = OutputFormat::kJson;
  } else if (!format.empty() && format != "table") {
    return absl::StrCat("--output ", output, ": expected table or json");
  }
  if (!absl::ParseDuration(flags_.timeout, &options->timeout)) {
    return absl::StrCat("--timeout ", flags_.timeout,
                        ": expected a duration with a unit, e.g. 30s or 2m");
  }
  auto token = LoadAuthToken(flags_.token_file);
  if (!token.ok()) return std::string(token.status().message());
  options->auth_token = *token;
  options->tls = {flags_.tls_cert, flags_.tls_key, flags_.tls_ca};
  if (auto credentials = MakeChannelCredentials(options->tls);
      !credentials.ok()) {
    return std::string(credentials.status().message());
  }
  options->redraw = env_.stdout_is_terminal;
  if (options->redraw) options->format.width = env_.terminal_width;
  return "";
}

// Flags whose 0 would silently mean "the default", or whose negative value
// means nothing, are refused here, naming the flag.
std::string Cli::SpecOverridesError(SpecOverrides* overrides) const {
  auto has = [&](const char* flag) { return Given("submit", flag); };
  auto positive = [](const char* flag, int32_t value, const char* omit) {
    return absl::StrCat(flag, " ", value, ": must be at least 1; ", omit);
  };
  auto non_negative = [](const char* flag, int32_t value, const char* zero) {
    return absl::StrCat(flag, " ", value, ": must be 0 (", zero, ") or more");
  };
  if (has("--epochs")) {
    if (flags_.epochs <= 0) {
      return positive("--epochs", flags_.epochs,
                      "omit it for the spec's value (default 5)");
    }
    overrides->epochs = flags_.epochs;
  }
  if (has("--train-limit")) {
    if (flags_.train_limit < 0) {
      return non_negative("--train-limit", flags_.train_limit, "all");
    }
    overrides->train_limit = flags_.train_limit;
  }
  if (has("--test-limit")) {
    if (flags_.test_limit < 0) {
      return non_negative("--test-limit", flags_.test_limit, "all");
    }
    overrides->test_limit = flags_.test_limit;
  }
  if (has("--recovery-epochs")) {
    if (flags_.recovery_epochs < 0) {
      return non_negative("--recovery-epochs", flags_.recovery_epochs, "none");
    }
    overrides->recovery_epochs = flags_.recovery_epochs;
  }
  if (has("--evaluations-per-epoch")) {
    if (flags_.evaluations_per_epoch < 0) {
      return non_negative("--evaluations-per-epoch",
                          flags_.evaluations_per_epoch, "none");
    }
    overrides->evaluations_per_epoch = flags_.evaluations_per_epoch;
  }
  if (has("--micro-batches")) {
    if (flags_.micro_batches < 1) {
      return absl::StrCat("--micro-batches ", flags_.micro_batches,
                          ": must be at least 1 (default: 4 x the stages)");
    }
    overrides->micro_batches = flags_.micro_batches;
  }
  if (has("--schedule")) overrides->schedule = flags_.schedule;
  if (has("--precision")) overrides->precision = flags_.precision;
  if (has("--kappa")) {
    if (!(flags_.kappa > 0)) {
      return absl::StrCat("--kappa ", flags_.kappa,
                          ": must be greater than 0 (default 1)");
    }
    overrides->kappa = flags_.kappa;
  }
  if (has("--hidden-widths")) overrides->hidden_widths = flags_.hidden_widths;
  if (has("--cut-after")) overrides->cut_after = flags_.cut_after;
  if (has("--seed")) overrides->seed = flags_.seed;
  if (has("--dataset")) overrides->dataset = flags_.dataset;
  if (has("--device")) overrides->device = flags_.device;
  if (has("--name")) overrides->name = flags_.name;
  if (has("--baseline")) overrides->baseline = flags_.baseline;
  if (has("--parallelism")) overrides->parallelism = flags_.parallelism;
  return "";
}

int Cli::DispatchSubmit(const ClientOptions& options) {
  SpecOverrides overrides;
  if (std::string error = SpecOverridesError(&overrides); !error.empty()) {
    return UsageError(error, "submit");
  }
  if (flags_.file.empty() && !overrides.any()) {
    // An empty spec is valid (all defaults) but rarely meant; say so.
    err_ << "pnnctl: no JOB.json and no spec flags: submitting the default "
            "job (the paper's network on fashion-mnist)\n";
  }
  absl::StatusOr<pnn::v1::SubmitJobRequest> request =
      BuildSubmitRequest(flags_.file, overrides);
  if (!request.ok()) {
    err_ << "pnnctl: " << request.status().message() << "\n";
    return kExitUsage;
  }
  return RunSubmit(options, *request, flags_.watch, out_, err_);
}

int Cli::DispatchList(const ClientOptions& options) {
  ListOptions list;
  absl::StatusOr<std::vector<pnn::v1::JobState>> states =
      ParseStateList(flags_.state);
  if (!states.ok()) {
    return UsageError(std::string(states.status().message()), "list");
  }
  list.states = *states;
  if (Given("list", "--page-size") && flags_.page_size <= 0) {
    return UsageError(
        absl::StrCat("--page-size ", flags_.page_size,
                     ": must be at least 1; omit it for the coordinator's "
                     "default"),
        "list");
  }
  list.page_size = flags_.page_size;
  list.page_token = flags_.page_token;
  list.all = flags_.all;
  return RunList(options, list, out_, err_);
}

int Cli::DispatchDownload(const ClientOptions& options) {
  DownloadOptions download;
  download.job_id = flags_.job_id;
  download.path = flags_.command_output;
  absl::StatusOr<pnn::v1::ModelFormat> format = ParseModelFormat(flags_.format);
  if (!format.ok()) {
    return UsageError(std::string(format.status().message()), "download");
  }
  download.format = *format;
  return RunDownload(options, download, out_, err_);
}

int Cli::Dispatch(const std::string& command) {
  if (command == "help") return Help(flags_.topic, out_, kExitOk);
  ClientOptions options;
  if (std::string error = ClientOptionsError(command, &options);
      !error.empty()) {
    return UsageError(error, command);
  }
  if (command == "submit") return DispatchSubmit(options);
  if (command == "list") return DispatchList(options);
  if (command == "download") return DispatchDownload(options);
  if (command == "get") return RunGet(options, flags_.job_id, out_, err_);
  if (command == "watch") return RunWatch(options, flags_.job_id, out_, err_);
  if (command == "cancel") {
    return RunCancel(options, flags_.job_id, out_, err_);
  }
  if (command == "health") {
    return RunHealth(options, flags_.service, out_, err_);
  }
  if (command == "workers") return RunWorkers(options, out_, err_);
  if (command == "logs") {
    return RunLogs(options, flags_.job_id, flags_.follow, out_, err_);
  }
  return UsageError(absl::StrCat("unknown command '", command, "'"), "");
}

int Cli::Run(const std::vector<std::string>& raw_args) {
  args_ = NormalizeFlagNames(raw_args);
  AddGlobalFlags();
  AddSubmit();
  AddListAndJobCommands();
  AddOtherCommands();
  std::vector<std::string> reversed(args_.rbegin(), args_.rend());
  try {
    app_.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    const std::string command = CommandName();
    return Help(Command(command) != nullptr ? command : "", out_, kExitOk);
  } catch (const CLI::ParseError& error) {
    return ParseFailure(error);
  }
  return Dispatch(app_.get_subcommands().front()->get_name());
}

}  // namespace

std::vector<std::string> NormalizeFlagNames(std::vector<std::string> args) {
  static const std::set<std::string> kNegatable = {"baseline", "watch", "all"};
  for (std::string& arg : args) {
    if (arg == "--") break;
    if (!absl::StartsWith(arg, "--")) continue;
    const size_t end = std::min(arg.find('='), arg.size());
    std::replace(arg.begin(), arg.begin() + end, '_', '-');
    const std::string name = arg.substr(2, end - 2);
    if (absl::StartsWith(name, "no") && kNegatable.count(name.substr(2)) > 0) {
      arg.insert(4, "-");  // --nobaseline -> --no-baseline
    }
  }
  return args;
}

std::string NearestName(absl::string_view name,
                        const std::vector<std::string>& candidates) {
  auto distance = [](absl::string_view a, absl::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t above = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                           diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diagonal = above;
      }
    }
    return row[b.size()];
  };
  const size_t limit = std::max<size_t>(2, name.size() / 3);
  std::string best;
  size_t best_distance = limit + 1;
  for (const std::string& candidate : candidates) {
    const size_t d = distance(name, candidate);
    if (d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  return best;
}

int RunPnnctl(const std::vector<std::string>& args, const CliEnvironment& env,
              std::ostream& out, std::ostream& err) {
  Cli cli(env, out, err);
  return cli.Run(args);
}

}  // namespace pnn::client
