// The coordinator's libtorch work, apart from its job table: joining the
// trained segments (before and after recovery epochs, which the workers
// run), the test passes (the joined model, the
// accuracy-over-time checkpoints, the conventional baseline) and the model
// files under <state_dir>/models.
//
// Thread safety: stateless apart from the shared data-set cache; call from
// one thread per job (the coordinator's assembly thread). It takes no lock
// of the coordinator's: inputs are copies, results are applied by the
// caller. Errors are absl::Status for the person who submitted the job.
#ifndef PNN_COORDINATOR_ASSEMBLER_H_
#define PNN_COORDINATOR_ASSEMBLER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pnn/v1/coordinator.pb.h"
#include "pnn/v1/job.pb.h"
#include "pnn/v1/segment.pb.h"

namespace pnn {

class DatasetCache;
struct DatasetShape;

// A task's weights at one evaluation point of the job.
struct CheckpointRecord {
  double job_seconds = 0;  // arrival, since the job's first dispatch
  int epoch = 0;
  int64_t batches_done = 0;
  double epochs_done = 0;
  double cpu_seconds = 0;
  pnn::v1::SegmentWeights weights;
};

struct AssemblyInput {
  std::string job_id;
  pnn::v1::JobSpec spec;                                   // resolved
  std::vector<pnn::v1::SegmentWeights> weights;            // by segment
  std::vector<std::vector<CheckpointRecord>> checkpoints;  // by segment
  bool pipeline = false;  // stages of one model-parallel run
  // After recovery epochs on the workers: each segment's weights at their
  // end (by segment), and the longest stage's training time.
  std::vector<pnn::v1::SegmentWeights> recovered;
  double recovery_seconds = 0;
};

struct AssemblyResult {
  pnn::v1::TestResult joined_test;  // before recovery epochs
  pnn::v1::TestResult final_test;   // after them (the same without)
  double recovery_seconds = 0;
  int64_t model_bytes = 0;  // of the safetensors file
  std::vector<pnn::v1::EvaluationPoint> curve;
};

class Assembler {
 public:
  struct Options {
    std::string state_dir;
    std::string data_dir;
    int threads = 1;  // intra-op threads for the test passes
    // Where joining, recovery and the test passes run ("cpu", "cuda:N"),
    // whatever device a job's workers trained on.
    std::string device = "cpu";
  };
  // `datasets` outlives the assembler.
  Assembler(Options options, DatasetCache* datasets);

  // FAILED_PRECONDITION when options.device is malformed or absent here
  // (CUDA asked of a CPU-only libtorch or machine).
  absl::Status CheckDevice() const;

  // Joins and tests the segments (and, after recovery epochs on the
  // workers, their recovered weights) and writes the model files.
  // CANCELLED as soon as `should_stop` says so (polled between batches and
  // evaluation points).
  absl::StatusOr<AssemblyResult> Assemble(
      const AssemblyInput& input, const std::function<bool()>& should_stop);
  // Checks a submitted job's data set against its spec, and loads (and
  // fully validates) the coordinator's own copy of it now, before any
  // worker trains: the test pass will need it. INVALID_ARGUMENT or
  // FAILED_PRECONDITION saying what to fix.
  absl::StatusOr<DatasetShape> CheckData(const pnn::v1::JobSpec& spec);
  // OK when `weights` (from a worker) are what `task` asked for: layers
  // and shapes; else why not. Checked before anything else uses them.
  static absl::Status CheckWeights(const pnn::v1::SegmentTask& task,
                                   const pnn::v1::SegmentWeights& weights);
  // Test result of the conventional baseline's weights.
  absl::StatusOr<pnn::v1::TestResult> TestBaseline(
      const pnn::v1::JobSpec& spec, const pnn::v1::SegmentWeights& weights);

  // <state_dir>/models/<job_id>.safetensors or .pnnw.
  std::string ModelPath(const std::string& job_id,
                        pnn::v1::ModelFormat format) const;
  // Removes the job's model files, if any.
  void RemoveModel(const std::string& job_id) const;

 private:
  const Options options_;
  DatasetCache* const datasets_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_ASSEMBLER_H_
