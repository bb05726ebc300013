// pnnctl: the command-line client of the pnn coordinator. Only what comes
// from the process (arguments, environment, terminal) is read here; parsing
// is in cli.h, the commands in commands.h.
//
//   pnnctl submit examples/fashion_mnist.json --epochs 2 --watch
//   pnnctl list --state running,queued
//   pnnctl get JOB_ID -o json
//   pnnctl download JOB_ID -o model.safetensors
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "client/cli.h"

namespace {

int TerminalWidth() {
  struct winsize size {};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) {
    return size.ws_col;
  }
  return 80;
}

}  // namespace

int main(int argc, char** argv) {
  pnn::client::CliEnvironment env;
  if (const char* coordinator = std::getenv("PNN_COORDINATOR")) {
    env.coordinator = coordinator;
  }
  const char* term = std::getenv("TERM");
  env.stdout_is_terminal = ::isatty(STDOUT_FILENO) &&
                           (term == nullptr || std::string(term) != "dumb");
  if (env.stdout_is_terminal) env.terminal_width = TerminalWidth();
  const std::vector<std::string> args(argv + 1, argv + argc);
  return pnn::client::RunPnnctl(args, env, std::cout, std::cerr);
}
