# Coordinator tests: logic without workers, and whole clusters in-process.
pnn_test(coordinator_test pnn::coordinator)
pnn_test(cluster_test pnn::coordinator pnn::worker)

# The real binaries on loopback, driven by pnnctl.
add_test(NAME e2e_cluster
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_cluster_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_cluster PROPERTIES TIMEOUT 600)

# Faults with the real binaries: SIGKILL a worker, SIGKILL the coordinator.
add_test(NAME e2e_faults
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_fault_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_faults PROPERTIES TIMEOUT 600)

# TLS and mutual TLS with the real binaries and a test CA.
add_test(NAME e2e_tls
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_tls_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(e2e_tls PROPERTIES TIMEOUT 300)
