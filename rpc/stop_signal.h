// SIGTERM / SIGINT handling for the services' main(): a handler writes to
// a self-pipe and main() waits on it. A blocked mask with sigwait() is not
// enough here: libraries start threads before main() (OpenBLAS's pool),
// and a process-directed signal delivered to one of those threads would
// kill the process instead of shutting it down gracefully.
#ifndef PNN_RPC_STOP_SIGNAL_H_
#define PNN_RPC_STOP_SIGNAL_H_

namespace pnn {

// Installs the handlers; call once, early in main(). False on failure.
bool InstallStopHandlers();

// Blocks until SIGTERM or SIGINT arrives; returns the signal number.
int WaitForStopSignal();

}  // namespace pnn

#endif  // PNN_RPC_STOP_SIGNAL_H_
