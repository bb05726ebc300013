// What training a model costs: analytic bytes and FLOPs from its shape, and
// the process's measured resident-memory growth. Free of libtorch.
#ifndef PNN_COMMON_ACCOUNTING_H_
#define PNN_COMMON_ACCOUNTING_H_

#include <cstdint>
#include <vector>

#include "common/layers.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

// Analytic cost of training the layers of `architecture` at `batch_size`
// with `config`'s optimizer (float32 everywhere):
//  parameters  P = sum over convolutions and linear layers; gradients P;
//  Adam 2P, SGD with momentum P, plain SGD 0;
//  activations = 4 bytes * batch * (the input, the leading activation's
//  output, every layer's output but a flatten's (a view), every
//  activation's output), i.e. what autograd keeps for the backward pass;
//  forward FLOPs/sample = 2 x the multiply-adds of convolutions and linear
//  layers; training = 3x forward.
// An architecture whose shapes do not fit counts nothing (validated specs
// always fit).
pnn::v1::TrainingCost AnalyticTrainingCost(
    const Architecture& architecture, const pnn::v1::TrainingConfig& config);

// Resident set size of this process now and its peak (Linux /proc).
int64_t CurrentRssBytes();
int64_t PeakRssBytes();

// CPU time (user + system, all threads) this process has used so far.
double ProcessCpuSeconds();

// Measures the peak RSS growth over a region: Start() records the RSS and
// resets the kernel's high-water mark (/proc/self/clear_refs), so the peak
// afterwards belongs to the region. Meaningful when one region runs at a
// time in the process (pnn trains one segment per process at a time).
class PeakRssMeter {
 public:
  void Start();
  int64_t PeakGrowthBytes() const;

 private:
  int64_t baseline_ = 0;
  bool reset_worked_ = false;
};

}  // namespace pnn

#endif  // PNN_COMMON_ACCOUNTING_H_
