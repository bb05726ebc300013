# Coordinator tests: logic without workers, and whole clusters in-process.
pnn_test(coordinator_test pnn::coordinator)
