# End-to-end tests driven from Debian's Python. Included by
# tests/CMakeLists.txt. Exit 77 = skipped (a Python package missing).
#
# The model users take away (examples/load_model.py): trained by the real
# binaries, downloaded with pnnctl, tested with Python's torch
# (python3-torch).
add_test(NAME e2e_model
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_model_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl> ${PROJECT_SOURCE_DIR})
set_tests_properties(e2e_model PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)

# The Python example client (client/python/pnn_client.py) against a real
# coordinator with TLS and a token. Exit 77 = skipped (python3-grpcio
# missing).
add_test(NAME e2e_python_client
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e_python_client_test.sh
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          ${PROJECT_SOURCE_DIR})
set_tests_properties(e2e_python_client PROPERTIES TIMEOUT 300
                     SKIP_RETURN_CODE 77 LABELS client)
