# Deployment tests (deploy/, docker-compose.yml): what can be checked
# without a Docker engine or a cluster. Included by tests/CMakeLists.txt.
# `ctest -L deploy` runs them all. Exit code 77 = skipped (a tool missing).
#
# The Python scripts need python3-yaml: Debian's /usr/bin/python3 has it
# (scripts/setup installs python3-yaml); a python3 earlier on PATH (pyenv,
# venv) may not, so /usr/bin is searched first.
find_program(PNN_DEPLOY_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT PNN_DEPLOY_PYTHON)
  find_program(PNN_DEPLOY_PYTHON NAMES python3)
endif()
find_program(PNN_PROMTOOL promtool)
find_program(PNN_DOCKER_COMPOSE docker-compose)
find_program(PNN_KUBECTL kubectl)

set(_deploy_dir ${PROJECT_SOURCE_DIR}/deploy)

function(pnn_deploy_test name)
  add_test(NAME ${name} ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS deploy SKIP_RETURN_CODE 77
                                          TIMEOUT 120)
endfunction()

# A tool missing at configure time: a test that says so and is skipped.
function(pnn_deploy_skip name message)
  pnn_deploy_test(${name} COMMAND sh -c "echo 'SKIP: ${message}'; exit 77")
endfunction()

# (a) Prometheus configuration and alert rules.
if(PNN_PROMTOOL)
  pnn_deploy_test(deploy_promtool_check_config
    COMMAND ${PNN_PROMTOOL} check config ${_deploy_dir}/prometheus/prometheus.yml)
  pnn_deploy_test(deploy_promtool_check_rules
    COMMAND ${PNN_PROMTOOL} check rules ${_deploy_dir}/prometheus/alerts.yml)
  # Behaviour of the alerts on synthetic series (alerts_test.yml).
  pnn_deploy_test(deploy_promtool_test_rules
    COMMAND ${PNN_PROMTOOL} test rules alerts_test.yml
    WORKING_DIRECTORY ${_deploy_dir}/prometheus)
else()
  foreach(_name deploy_promtool_check_config deploy_promtool_check_rules
                deploy_promtool_test_rules)
    pnn_deploy_skip(${_name}
      "promtool not found (Debian package prometheus; scripts/setup installs it)")
  endforeach()
endif()

# (b) docker-compose.yml: the Compose implementation's own validation, then
# the structure (scaling, health checks, GPU profile, ports) of its
# resolved form.
if(PNN_DOCKER_COMPOSE)
  pnn_deploy_test(deploy_compose_config
    COMMAND ${PNN_DOCKER_COMPOSE} -f docker-compose.yml config -q
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  pnn_deploy_test(deploy_compose_config_gpu
    COMMAND ${PNN_DOCKER_COMPOSE} -f docker-compose.yml --profile gpu config -q
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  # The opt-in token + TLS overlay (docker-compose.secure.yml).
  pnn_deploy_test(deploy_compose_secure_config
    COMMAND ${PNN_DOCKER_COMPOSE} -f docker-compose.yml -f docker-compose.secure.yml
            --profile gpu config -q
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
else()
  foreach(_name deploy_compose_config deploy_compose_config_gpu
                deploy_compose_secure_config)
    pnn_deploy_skip(${_name}
      "docker-compose not found (Debian package docker-compose; scripts/setup installs it)")
  endforeach()
endif()
pnn_deploy_test(deploy_compose_structure
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
          compose ${PROJECT_SOURCE_DIR})
# Token and TLS wiring of the overlay: flags, secrets, health checks.
pnn_deploy_test(deploy_compose_secure
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
          compose-secure ${PROJECT_SOURCE_DIR})

# (c) Kubernetes manifests, the Dockerfile and its runtime libraries, the
# data seeder.
pnn_deploy_test(deploy_k8s_manifests
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
          k8s ${PROJECT_SOURCE_DIR})
# deploy/k8s-secure (token and mutual TLS from Secret pnn-auth).
pnn_deploy_test(deploy_k8s_secure
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
          k8s-secure ${PROJECT_SOURCE_DIR})
# What `kubectl apply -k` would apply, rendered by `kubectl kustomize`
# (offline) for each overlay: one Job seeds the data volume, the
# Deployments wait for it and mount it read-only, every image comes from
# deploy/k8s/kustomization.yaml's `images:` (also after changing it there
# only), namespace pnn, and the auth flags of deploy/k8s-secure.
foreach(_overlay k8s k8s-secure)
  string(REPLACE "-" "_" _test deploy_${_overlay}_kustomize)
  if(PNN_KUBECTL)
    pnn_deploy_test(${_test}
      COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
              kustomize ${PROJECT_SOURCE_DIR} ${_overlay} ${PNN_KUBECTL})
  else()
    pnn_deploy_skip(${_test}
      "kubectl not found (any kubectl >= 1.21; kubectl kustomize needs no cluster)")
  endif()
endforeach()
pnn_deploy_test(deploy_dockerfile
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
          docker ${PROJECT_SOURCE_DIR})
pnn_deploy_test(deploy_runtime_libraries
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_config_test.py
          runtime-libs ${PROJECT_SOURCE_DIR}
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
pnn_deploy_test(deploy_seed_data
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/deploy_seed_data_test.sh
          ${PROJECT_SOURCE_DIR})
pnn_deploy_test(deploy_grafana_password
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/deploy_grafana_password_test.sh
          ${PROJECT_SOURCE_DIR})

# (d) The metric names of the dashboard and the alerts: in the contract, and
# exported by the real binaries.
pnn_deploy_test(deploy_metric_names
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_metrics.py
          names ${PROJECT_SOURCE_DIR})
pnn_deploy_test(deploy_metrics_exported
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_metrics.py
          exported ${PROJECT_SOURCE_DIR}
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>)

# (e) A real Prometheus scraping a loopback cluster that trains one job.
pnn_deploy_test(deploy_prometheus_scrape
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/deploy_prometheus_test.py
          ${PROJECT_SOURCE_DIR}
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>
          $<TARGET_FILE:pnnctl>)
set_tests_properties(deploy_prometheus_scrape PROPERTIES TIMEOUT 240)
# Both start a coordinator and workers: never both at once.
set_tests_properties(deploy_metrics_exported deploy_prometheus_scrape
  PROPERTIES RESOURCE_LOCK pnn_loopback_cluster)

# (f) docker-compose on a real Docker engine (tests/compose_e2e_test.py):
# builds pnn's image from deploy/docker/Dockerfile as `docker-compose build`
# does (~10 min cold, both cores), runs docker-compose.yml with 3 workers and
# Prometheus, injects faults between containers, then the secure overlay.
# Alone (RUN_SERIAL): the image build would starve any test beside it.
# Skipped (77) without root or Docker unless PNN_REQUIRE_DOCKER=1 (.ci/run).
# `ctest -L docker` runs it alone.
pnn_deploy_test(compose_e2e
  COMMAND ${PNN_DEPLOY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/compose_e2e_test.py
          ${PROJECT_SOURCE_DIR} $<TARGET_FILE:pnnctl>
          $<TARGET_FILE:pnn-coordinator> $<TARGET_FILE:pnn-worker>)
set_tests_properties(compose_e2e PROPERTIES TIMEOUT 3600 RUN_SERIAL TRUE
                                            LABELS "deploy;docker")
