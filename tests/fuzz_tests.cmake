# Fuzz targets (tests/fuzz/, docs/FUZZING.md): libFuzzer binaries for the
# two parsers of untrusted input, the IDX reader and job specs. Included by
# tests/CMakeLists.txt.
#
# The main build uses g++ and libtorch; the fuzzers need clang's libFuzzer
# and sanitizers, so they are compiled here by custom commands that call
# clang++ on the few sources they need (common/idx.cc, common/job_spec.cc,
# the generated job.pb.cc) and link protobuf, Abseil and zlib from the
# system. Outputs: <build>/tests/fuzz/{idx_fuzzer,job_spec_fuzzer}, built by
# `all` (target pnn_fuzzers).
#
# ctest: fuzz_idx and fuzz_job_spec run each fuzzer for PNN_FUZZ_SECONDS on
# a copy of its seed corpus (`ctest -L fuzz`). Without a working clang +
# libFuzzer (Debian: clang libclang-rt-14-dev), or with -DPNN_FUZZ=OFF, both
# tests report SKIP (exit code 77) and nothing else changes.
option(PNN_FUZZ "Build the libFuzzer targets (needs clang)" ON)
set(PNN_FUZZ_SECONDS 20 CACHE STRING
    "Seconds each fuzz test (ctest -L fuzz) runs its fuzzer")

set(_fuzz_src ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
set(_fuzz_bin ${CMAKE_CURRENT_BINARY_DIR}/fuzz)
set(_fuzz_tests fuzz_idx fuzz_job_spec)

function(pnn_fuzz_skip_all message)
  message(STATUS "pnn: fuzz tests skipped: ${message}")
  foreach(_name ${_fuzz_tests})
    add_test(NAME ${_name} COMMAND sh -c "echo 'SKIP: ${message}'; exit 77")
    set_tests_properties(${_name} PROPERTIES LABELS fuzz SKIP_RETURN_CODE 77)
  endforeach()
endfunction()

set(_fuzz_ok TRUE)
if(NOT PNN_FUZZ)
  pnn_fuzz_skip_all("disabled (-DPNN_FUZZ=OFF)")
  set(_fuzz_ok FALSE)
endif()

if(_fuzz_ok)
  find_program(PNN_FUZZ_CXX NAMES clang++ clang++-14
               DOC "clang++ with libFuzzer, for tests/fuzz")
  if(NOT PNN_FUZZ_CXX)
    pnn_fuzz_skip_all(
      "clang++ not found (Debian: clang libclang-rt-14-dev; scripts/setup installs them)")
    set(_fuzz_ok FALSE)
  endif()
endif()

set(_fuzz_cxxflags -std=c++17 -O1 -g -fno-omit-frame-pointer -pthread
    -fsanitize=fuzzer-no-link,address,undefined
    -fno-sanitize-recover=undefined -Wall -Wextra -Wno-unused-parameter)
set(_fuzz_ldflags -fsanitize=fuzzer,address,undefined -pthread)

# clang++ found: can it build and link a libFuzzer binary? (clang without
# libclang-rt-14-dev cannot.) Probed once per compiler.
if(_fuzz_ok AND NOT PNN_FUZZ_PROBED_CXX STREQUAL PNN_FUZZ_CXX)
  set(_probe ${_fuzz_bin}/probe)
  file(MAKE_DIRECTORY ${_probe})
  file(WRITE ${_probe}/probe.cc
       "#include <cstddef>\n#include <cstdint>\n"
       "extern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) "
       "{ return 0; }\n")
  execute_process(
    COMMAND ${PNN_FUZZ_CXX} -std=c++17 -fsanitize=fuzzer,address,undefined
            probe.cc -o probe
    WORKING_DIRECTORY ${_probe}
    RESULT_VARIABLE _probe_result OUTPUT_QUIET ERROR_VARIABLE _probe_error)
  if(_probe_result EQUAL 0)
    set(PNN_FUZZ_WORKS TRUE CACHE INTERNAL "")
  else()
    set(PNN_FUZZ_WORKS FALSE CACHE INTERNAL "")
    string(REGEX REPLACE "\n.*" "" _probe_error "${_probe_error}")
    if(_probe_error STREQUAL "")
      set(_probe_error "exit status ${_probe_result}")
    endif()
    set(PNN_FUZZ_PROBE_ERROR "${_probe_error}" CACHE INTERNAL "")
  endif()
  set(PNN_FUZZ_PROBED_CXX "${PNN_FUZZ_CXX}" CACHE INTERNAL "")
endif()
if(_fuzz_ok AND NOT PNN_FUZZ_WORKS)
  string(REPLACE "'" "" _why "${PNN_FUZZ_PROBE_ERROR}")
  pnn_fuzz_skip_all(
    "${PNN_FUZZ_CXX} cannot link a libFuzzer binary (Debian: libclang-rt-14-dev): ${_why}")
  set(_fuzz_ok FALSE)
endif()

if(_fuzz_ok)
  # System protobuf, Abseil and zlib, as pkg-config lists them.
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(PNN_FUZZ_DEPS QUIET
      absl_status absl_statusor absl_strings protobuf zlib)
  endif()
  if(PNN_FUZZ_DEPS_FOUND)
    set(_fuzz_libs ${PNN_FUZZ_DEPS_LDFLAGS})
    set(_fuzz_cxxflags ${_fuzz_cxxflags} ${PNN_FUZZ_DEPS_CFLAGS})
  else()
    # Debian 12's libabsl-dev 20220623 and libprotobuf-dev 3.21.
    set(_fuzz_libs -labsl_statusor -labsl_status -labsl_cord
        -labsl_cordz_info -labsl_cord_internal -labsl_cordz_functions
        -labsl_exponential_biased -labsl_cordz_handle -labsl_synchronization
        -labsl_graphcycles_internal -labsl_time -labsl_civil_time
        -labsl_time_zone -labsl_bad_optional_access -labsl_stacktrace
        -labsl_str_format_internal -labsl_strerror -labsl_symbolize
        -labsl_debugging_internal -labsl_demangle_internal
        -labsl_malloc_internal -labsl_bad_variant_access -labsl_strings
        -labsl_strings_internal -latomic -lrt -labsl_base
        -labsl_spinlock_wait -labsl_int128 -labsl_throw_delegate
        -labsl_raw_logging_internal -labsl_log_severity -lprotobuf -lz)
  endif()

  get_target_property(_proto_bin pnn_proto BINARY_DIR)  # <build>/proto
  set(_job_pb_cc ${_proto_bin}/pnn/v1/job.pb.cc)
  set(_job_pb_h ${_proto_bin}/pnn/v1/job.pb.h)
  set(_segment_pb_cc ${_proto_bin}/pnn/v1/segment.pb.cc)
  set(_segment_pb_h ${_proto_bin}/pnn/v1/segment.pb.h)
  set(_fuzz_launcher)
  if(CCACHE_PROGRAM)
    set(_fuzz_launcher ${CCACHE_PROGRAM})
  endif()

  # One object per source; `extra_deps` orders generated headers first.
  function(pnn_fuzz_object out source)
    set(_object ${_fuzz_bin}/obj/${out}.o)
    add_custom_command(
      OUTPUT ${_object}
      COMMAND ${_fuzz_launcher} ${PNN_FUZZ_CXX} ${_fuzz_cxxflags}
              -I${PROJECT_SOURCE_DIR} -I${_proto_bin}
              -MD -MF ${_object}.d -c ${source} -o ${_object}
      DEPENDS ${source} ${ARGN}
      DEPFILE ${_object}.d
      COMMENT "clang++ (libFuzzer, ASan, UBSan) ${out}.o"
      VERBATIM)
  endfunction()

  pnn_fuzz_object(idx ${PROJECT_SOURCE_DIR}/common/idx.cc)
  pnn_fuzz_object(job_spec ${PROJECT_SOURCE_DIR}/common/job_spec.cc
                  ${_job_pb_h})
  pnn_fuzz_object(job.pb ${_job_pb_cc} ${_job_pb_h})
  # auto_cut (and the accounting it uses) for specs that let pnn cut.
  pnn_fuzz_object(auto_cut ${PROJECT_SOURCE_DIR}/common/auto_cut.cc
                  ${_job_pb_h} ${_segment_pb_h})
  pnn_fuzz_object(accounting ${PROJECT_SOURCE_DIR}/common/accounting.cc
                  ${_job_pb_h} ${_segment_pb_h})
  pnn_fuzz_object(layers ${PROJECT_SOURCE_DIR}/common/layers.cc
                  ${_job_pb_h} ${_segment_pb_h})
  pnn_fuzz_object(segment.pb ${_segment_pb_cc} ${_segment_pb_h})
  pnn_fuzz_object(idx_fuzzer ${_fuzz_src}/idx_fuzzer.cc)
  pnn_fuzz_object(job_spec_fuzzer ${_fuzz_src}/job_spec_fuzzer.cc
                  ${_job_pb_h} ${_segment_pb_h})

  function(pnn_fuzz_binary name)
    set(_objects)
    foreach(_object ${ARGN})
      list(APPEND _objects ${_fuzz_bin}/obj/${_object}.o)
    endforeach()
    add_custom_command(
      OUTPUT ${_fuzz_bin}/${name}
      COMMAND ${PNN_FUZZ_CXX} ${_fuzz_ldflags} ${_objects} ${_fuzz_libs}
              -o ${_fuzz_bin}/${name}
      DEPENDS ${_objects}
      COMMENT "Linking libFuzzer binary tests/fuzz/${name}"
      VERBATIM)
  endfunction()

  pnn_fuzz_binary(idx_fuzzer idx_fuzzer idx)
  pnn_fuzz_binary(job_spec_fuzzer job_spec_fuzzer job_spec auto_cut accounting
                  layers job.pb segment.pb)
  add_custom_target(pnn_fuzzers ALL
    DEPENDS ${_fuzz_bin}/idx_fuzzer ${_fuzz_bin}/job_spec_fuzzer)

  # Each test fuzzes a temporary copy of the seed corpus; crashes land in
  # <build>/tests/fuzz/artifacts/<name>/, the full log beside them.
  foreach(_target idx job_spec)
    set(_dict)
    if(EXISTS ${_fuzz_src}/${_target}.dict)
      set(_dict -dict=${_fuzz_src}/${_target}.dict)
    endif()
    add_test(NAME fuzz_${_target}
      COMMAND sh ${_fuzz_src}/run_fuzzer.sh ${_fuzz_bin}/${_target}_fuzzer
              ${_fuzz_src}/corpus/${_target}
              ${_fuzz_bin}/artifacts/${_target} ${PNN_FUZZ_SECONDS} ${_dict})
    math(EXPR _timeout "${PNN_FUZZ_SECONDS} + 120")
    set_tests_properties(fuzz_${_target} PROPERTIES
      LABELS fuzz SKIP_RETURN_CODE 77 TIMEOUT ${_timeout})
  endforeach()
endif()
