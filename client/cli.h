// pnnctl's command line: parses the arguments (CLI11) into the options of
// commands.h, reports usage mistakes with what to type instead, and runs
// the chosen command.
//
// Flags are kebab-case (--train-limit); the snake_case spelling of the
// Abseil-flags era (--train_limit) is accepted too. Global flags (e.g.
// --coordinator) may come before or after the command. Usage mistakes exit
// kExitUsage; help exits 0. Writes only to the given streams.
#ifndef PNN_CLIENT_CLI_H_
#define PNN_CLIENT_CLI_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace pnn::client {

// What pnnctl takes from its process rather than from its arguments.
struct CliEnvironment {
  std::string coordinator;          // $PNN_COORDINATOR; empty: unset
  bool stdout_is_terminal = false;  // redraw the watch display in place
  int terminal_width = 0;           // columns; 0: unknown
};

// Runs pnnctl with `args` (without the program name) and returns its exit
// status.
int RunPnnctl(const std::vector<std::string>& args, const CliEnvironment& env,
              std::ostream& out, std::ostream& err);

// Rewrites flag names to kebab-case: "--train_limit=5" -> "--train-limit=5",
// "--nobaseline" -> "--no-baseline". Values and everything after "--" are
// left alone.
std::vector<std::string> NormalizeFlagNames(std::vector<std::string> args);

// The candidate closest to `name` by edit distance, if it is close enough to
// be a plausible typo (at most a third of the name's length, at least 2
// edits allowed); else "".
std::string NearestName(absl::string_view name,
                        const std::vector<std::string>& candidates);

}  // namespace pnn::client

#endif  // PNN_CLIENT_CLI_H_
