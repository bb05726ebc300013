// pnn-matmul-peak: the matrix-multiply FLOP/s of this machine on N intra-op
// threads, the denominator of model FLOP utilisation (MFU) in bench/.
//
//   pnn-matmul-peak --threads 2 [--size 1024] [--seconds 3]
//   {"threads":2,"size":1024,"gflops":81.3,"blas_threads_set":true}
//
// It multiplies two random float32 n x n matrices with at::mm on the CPU,
// the same kernel path (libtorch -> system BLAS) and the same thread setting
// (at::set_num_threads) as pnn's trainer, for --seconds after a warm-up, and
// prints the sustained rate: 2 n^3 FLOPs per product over the elapsed time.
//
// at::set_num_threads does not reach Debian's OpenBLAS (pthread variant),
// which starts one thread per core on its own; so the BLAS thread count is
// also set, through openblas_set_num_threads when the loaded BLAS has it
// (run_bench.py sets OPENBLAS_NUM_THREADS for every process it starts, to
// the same effect).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

int Usage(const char* message) {
  if (message != nullptr) std::fprintf(stderr, "pnn-matmul-peak: %s\n", message);
  std::fprintf(stderr,
               "Usage: pnn-matmul-peak --threads N [--size 1024] "
               "[--seconds 3]\nPrints {\"threads\":N,\"size\":n,\"gflops\":x}: "
               "float32 torch::mm FLOP/s (2 n^3 per product) on N threads.\n");
  return message == nullptr ? 0 : 1;
}

// Accepts "--name value" and "--name=value"; advances *i past the value.
bool FlagValue(int argc, char** argv, int* i, const char* name,
               std::string* value) {
  const std::size_t length = std::strlen(name);
  const char* arg = argv[*i];
  if (std::strncmp(arg, name, length) != 0) return false;
  if (arg[length] == '=') {
    *value = arg + length + 1;
    return true;
  }
  if (arg[length] != '\0' || *i + 1 >= argc) return false;
  *value = argv[++*i];
  return true;
}

// Limits OpenBLAS's own thread pool to `threads`; true if the BLAS has it.
bool SetBlasThreads(int threads) {
  using SetThreads = void (*)(int);
  auto set = reinterpret_cast<SetThreads>(
      dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return false;
  set(threads);
  return true;
}

bool ParsePositive(const std::string& text, double* out) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value > 0)) return false;
  *out = value;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  double threads = 0;
  double size = 1024;
  double seconds = 3;
  for (int i = 1; i < argc; ++i) {
    std::string value;
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      return Usage(nullptr);
    } else if (FlagValue(argc, argv, &i, "--threads", &value)) {
      if (!ParsePositive(value, &threads)) return Usage("bad --threads");
    } else if (FlagValue(argc, argv, &i, "--size", &value)) {
      if (!ParsePositive(value, &size)) return Usage("bad --size");
    } else if (FlagValue(argc, argv, &i, "--seconds", &value)) {
      if (!ParsePositive(value, &seconds)) return Usage("bad --seconds");
    } else {
      return Usage((std::string("unknown argument ") + argv[i]).c_str());
    }
  }
  if (threads < 1) return Usage("--threads N is required");
  const int n = static_cast<int>(size);
  at::set_num_threads(static_cast<int>(threads));
  const bool blas_threads = SetBlasThreads(static_cast<int>(threads));

  at::manual_seed(1);
  const at::Tensor a = at::randn({n, n}, at::kFloat);
  const at::Tensor b = at::randn({n, n}, at::kFloat);
  at::Tensor c = at::empty({n, n}, at::kFloat);
  // Warm-up: thread pools, BLAS buffers, page faults of c.
  for (int i = 0; i < 2; ++i) at::mm_out(c, a, b);

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  double elapsed = 0;
  long products = 0;
  do {
    at::mm_out(c, a, b);
    ++products;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);

  const double flops = 2.0 * n * static_cast<double>(n) * n * products;
  std::printf(
      "{\"threads\":%d,\"size\":%d,\"gflops\":%.3f,\"blas_threads_set\":%s}\n",
      static_cast<int>(threads), n, flops / elapsed / 1e9,
      blas_threads ? "true" : "false");
  return 0;
}
