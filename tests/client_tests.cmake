# pnnctl's tests. They link pnn::client only (no libtorch), hence not
# pnn_test(), which links pnn::common.
function(pnn_client_test name)
  add_executable(${name} ${name}.cc)
  target_link_libraries(${name} PRIVATE pnn::client GTest::gmock_main ${ARGN})
  # The prefix lets `ctest -R client_` select these.
  gtest_discover_tests(${name} TEST_PREFIX "${name}." DISCOVERY_TIMEOUT 60
                       PROPERTIES TIMEOUT 120 LABELS client)
endfunction()

pnn_client_test(client_request_test)
target_compile_definitions(client_request_test PRIVATE
  PNN_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
pnn_client_test(client_format_test)
# In-process fake coordinator; also runs the pnnctl binary against it.
pnn_client_test(client_commands_test)
target_compile_definitions(client_commands_test PRIVATE
  PNNCTL_BINARY="$<TARGET_FILE:pnnctl>")
add_dependencies(client_commands_test pnnctl)
