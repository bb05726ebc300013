#include "common/device_memory.h"

// PNN_WITH_CUDA is set by common/CMakeLists.txt when the libtorch found
// links c10_cuda (a CUDA build: PyTorch's, not Debian's).
#if PNN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace pnn {

#if PNN_WITH_CUDA
namespace allocator = c10::cuda::CUDACachingAllocator;

// Index 0 of each StatArray is StatType::AGGREGATE (every pool) in all
// libtorch versions; the enum moved namespaces in 2.x, the index did not.
constexpr size_t kAggregate = 0;

void ResetDevicePeakMemory(int cuda_index) {
  if (cuda_index < 0) return;
  allocator::resetPeakStats(static_cast<c10::DeviceIndex>(cuda_index));
}

DevicePeakMemory ReadDevicePeakMemory(int cuda_index) {
  if (cuda_index < 0) return {};
  const auto stats =
      allocator::getDeviceStats(static_cast<c10::DeviceIndex>(cuda_index));
  return {stats.allocated_bytes[kAggregate].peak,
          stats.reserved_bytes[kAggregate].peak};
}

bool CanMeasureDeviceMemory() { return true; }
#else
void ResetDevicePeakMemory(int) {}
DevicePeakMemory ReadDevicePeakMemory(int) { return {}; }
bool CanMeasureDeviceMemory() { return false; }
#endif

}  // namespace pnn
