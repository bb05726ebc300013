# Worker service tests: real gRPC servers on 127.0.0.1, in-process, plus
# the pnn-worker binary under signals. Included by tests/CMakeLists.txt.
pnn_test(worker_service_test pnn::worker)
pnn_test(worker_registration_test pnn::worker)
target_compile_definitions(worker_registration_test PRIVATE
  PNN_WORKER_BINARY="$<TARGET_FILE:pnn-worker>")
add_dependencies(worker_registration_test pnn-worker)
