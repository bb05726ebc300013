# Coordinator tests: logic without workers, and whole clusters in-process.
pnn_test(coordinator_test pnn::coordinator)
pnn_test(worker_registry_test pnn::coordinator)
pnn_test(retry_policy_test pnn::coordinator)
pnn_test(placement_test pnn::coordinator)
pnn_test(job_store_test pnn::coordinator)
pnn_test(job_table_test pnn::coordinator)
pnn_test(store_writer_test pnn::coordinator)
pnn_test(cluster_test pnn::coordinator pnn::worker)
# Model-parallel jobs: stages on several workers, StageForward between them.
pnn_test(pipeline_cluster_test pnn::coordinator pnn::worker)
# A fake worker returning malformed weights; a real one afterwards.
pnn_test(malformed_weights_test pnn::coordinator pnn::worker)

# The real binaries on loopback, driven by pnnctl.
add_test(NAME e2e_cluster
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_cluster_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_cluster PROPERTIES TIMEOUT 600)

# Faults with the real binaries: SIGKILL a worker, SIGKILL the coordinator,
# in rounds (PNN_FAULT_ROUNDS, default 2; set it in the environment of
# ctest for longer runs).
add_test(NAME e2e_faults
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_fault_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_faults PROPERTIES TIMEOUT 600)

# Graceful shutdown: SIGTERM to a worker mid-segment and to the coordinator
# mid-job; both exit promptly with status 0 and the job finishes after a
# restart on the same state directory.
add_test(NAME e2e_shutdown
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_shutdown_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_shutdown PROPERTIES TIMEOUT 300)

# TLS and mutual TLS with the real binaries and a test CA.
add_test(NAME e2e_tls
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_tls_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_tls PROPERTIES TIMEOUT 300)
