// Memory as the CUDA caching allocator counts it: the figures users know as
// torch.cuda.max_memory_allocated() / max_memory_reserved().
//
// Free of libtorch headers: a device is its CUDA index, and a negative
// index (the CPU) reports zeros. Builds without CUDA (Debian's libtorch)
// report zeros too. The allocator's counters are per device and
// process-wide: two runs on one device at once see each other's memory.
#ifndef PNN_COMMON_DEVICE_MEMORY_H_
#define PNN_COMMON_DEVICE_MEMORY_H_

#include <cstdint>

namespace pnn {

struct DevicePeakMemory {
  int64_t allocated_bytes = 0;  // tensors' bytes
  int64_t reserved_bytes = 0;   // blocks the allocator holds from CUDA
};

// Starts the peaks of CUDA device `cuda_index` anew at what it holds now.
void ResetDevicePeakMemory(int cuda_index);

// The peaks of CUDA device `cuda_index` since the last reset.
DevicePeakMemory ReadDevicePeakMemory(int cuda_index);

// True when this build can measure CUDA memory (libtorch built with CUDA).
bool CanMeasureDeviceMemory();

}  // namespace pnn

#endif  // PNN_COMMON_DEVICE_MEMORY_H_
