// Protobuf timestamps from absl time, with sub-second precision
// (TimeUtil::GetCurrentTime() has only whole seconds in protobuf 3.21).
#ifndef PNN_COORDINATOR_PROTO_TIME_H_
#define PNN_COORDINATOR_PROTO_TIME_H_

#include <google/protobuf/timestamp.pb.h>

#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace pnn {

inline google::protobuf::Timestamp ToProtoTime(absl::Time time) {
  const int64_t nanos = absl::ToUnixNanos(time);
  google::protobuf::Timestamp timestamp;
  timestamp.set_seconds(nanos / 1000000000);
  timestamp.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return timestamp;
}

inline google::protobuf::Timestamp ProtoNow() {
  return ToProtoTime(absl::Now());
}

inline double SecondsBetween(const google::protobuf::Timestamp& from,
                             const google::protobuf::Timestamp& to) {
  return static_cast<double>(to.seconds() - from.seconds()) +
         (to.nanos() - from.nanos()) / 1e9;
}

}  // namespace pnn

#endif  // PNN_COORDINATOR_PROTO_TIME_H_
