// The small partitioned job the training tests share: 36-pixel, 4-class
// synthetic data (1024 training, 512 test samples) and a 36-32-16-4
// network cut after layer 1, 10 epochs of batches of 32, SIL input noise
// 0.05; small enough to train in well under a second on a CPU.
#ifndef PNN_TESTS_SMALL_JOB_H_
#define PNN_TESTS_SMALL_JOB_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/dataset.h"
#include "common/job_spec.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

inline Dataset SmallJobData() {
  SyntheticDatasetOptions options;
  options.train_samples = 1024;
  options.test_samples = 512;
  return MakeSyntheticDataset(options);
}

// The job's spec on `device`, resolved.
inline absl::StatusOr<pnn::v1::JobSpec> SmallJobSpec(
    const std::string& device = "cpu") {
  pnn::v1::JobSpec spec;
  spec.mutable_model()->add_hidden_widths(32);
  spec.mutable_model()->add_hidden_widths(16);
  spec.mutable_model()->add_cut_after_layers(1);
  spec.mutable_training()->set_epochs(10);
  spec.mutable_training()->set_batch_size(32);
  spec.mutable_sil()->set_input_noise_std(0.05f);
  spec.set_device(device);
  return ResolveJobSpec(spec);
}

}  // namespace pnn

#endif  // PNN_TESTS_SMALL_JOB_H_
