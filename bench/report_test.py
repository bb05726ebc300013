#!/usr/bin/env python3
"""Tests of bench/report.py and run_bench.py's pure helpers on made-up jobs.

No process is started: the Job JSON of each mode is built here the way
`pnnctl get --output json` prints it (proto3 JSON: int64 values as strings).
Run: /usr/bin/python3 bench/report_test.py (ctest -L bench).
"""

import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
import run_bench  # noqa: E402

WIDTHS = [784, 256, 256, 256, 256, 256, 10]
BATCH = 128
SPEC = {
    "model": {"hidden_widths": [256] * 5, "cut_after_layers": [3],
              "activation": "ACTIVATION_RELU"},
    "training": {"epochs": 2, "batch_size": BATCH, "learning_rate": 0.001,
                 "optimizer": "OPTIMIZER_ADAM"},
    "dataset": {"path": "fashion-mnist", "train_limit": 6000, "test_limit": 0},
    "seed": "1",
}


def proto_cost(first, last, wall, samples_per_second, cpu, peer_sent=0, peer_received=0):
    """A TrainingCost as proto3 JSON (int64 as strings)."""
    cost = report.analytic_cost(WIDTHS[first - 1:last + 1], first > 1, BATCH)
    out = {k: str(v) for k, v in cost.items() if k != "training_bytes"}
    out.update({"wall_seconds": wall, "samples_per_second": samples_per_second,
                "peak_rss_growth_bytes": "7000000", "dataset_bytes": "18816000",
                "peer_bytes_sent": str(peer_sent),
                "peer_bytes_received": str(peer_received), "cpu_seconds": cpu})
    return out


def task(index, first, last, wall, address, cpu, **peer):
    return {"segment_index": index, "first_layer": first, "last_layer": last,
            "worker_id": f"w{index}", "worker_address": address,
            "state": "TASK_STATE_SUCCEEDED",
            "start_time": "2024-05-01T10:00:00.123456789Z",
            "end_time": f"2024-05-01T10:00:{int(wall):02d}.5Z",
            "epochs": [{"epoch": 1, "train_loss": 0.5, "seconds": wall / 2,
                        "samples_per_second": 12000.0,
                        "peak_rss_growth_bytes": "1000"}],
            "bytes_sent": "10000", "bytes_received": "1000000",
            "checkpoint_bytes": "4000000",
            "cost": proto_cost(first, last, wall, 12000.0, cpu, **peer)}


def job(mode, tasks, accuracy, curve, training_seconds, bytes_sent, bytes_received,
        peer_bytes=0):
    """A final Job; curve: (wall seconds, epochs done, accuracy, cpu seconds)."""
    spec = dict(SPEC, parallelism=run_bench.MODES[mode]["parallelism"])
    return {
        "job_id": f"job-{mode}", "spec": spec, "state": "JOB_STATE_SUCCEEDED",
        "message": "", "segments": tasks,
        "start_time": "2024-05-01T10:00:00Z", "end_time": "2024-05-01T10:01:00Z",
        "test": {"accuracy": accuracy, "loss": 0.4, "samples": "10000"},
        "joined_test_accuracy": accuracy,
        "bytes_sent": str(bytes_sent), "bytes_received": str(bytes_received),
        "peer_bytes": str(peer_bytes), "checkpoint_bytes": "8000000",
        "training_seconds": training_seconds, "input_width": 784, "num_classes": 10,
        "evaluations": [{"wall_seconds": w, "epochs_done": e, "test_accuracy": a,
                         "test_loss": 0.5, "cpu_seconds": c} for w, e, a, c in curve],
    }


def pipelined(job_json, micro_batches, idle):
    """A model-parallel job as the coordinator reports its pipeline."""
    stages = len(idle)
    job_json["spec"] = dict(job_json["spec"], pipeline={
        "micro_batches": micro_batches, "schedule": "PIPELINE_SCHEDULE_1F1B"})
    job_json["pipeline"] = {
        "micro_batches": micro_batches, "schedule": "PIPELINE_SCHEDULE_1F1B",
        "bubble_formula": (stages - 1) / (micro_batches + stages - 1),
        "stage_idle_fractions": idle, "bubble_fraction": min(idle),
        "activation_bytes": "300000"}
    return job_json


def run_info(workers, threads):
    return {"workers": [{"name": f"bench-{i}", "address": f"127.0.0.1:{5000 + i}",
                         "threads": threads, "baseline_rss_bytes": 100 << 20,
                         "peak_rss_bytes": 400 << 20, "rss_growth_bytes": 300 << 20}
                        for i in range(workers)],
            "threads_per_worker": threads, "threads_total": workers * threads,
            "submit_to_final_seconds": 70.0}


def fixture_results():
    """Results of a made-up run in which partitioned meets every target but
    the memory one is checked against an exact ratio."""
    matmul = {"1": 40.0, "2": 80.0}
    curve = lambda scale: [(5 * scale, 0.5, 0.70, 9 * scale), (10 * scale, 1.0, 0.80, 19 * scale),
                           (15 * scale, 1.5, 0.84, 29 * scale), (20 * scale, 2.0, 0.86, 39 * scale)]
    jobs = {
        "conventional": (job("conventional", [task(0, 1, 6, 20.0, "127.0.0.1:5000", 39.0)],
                             0.86, curve(1.0), 20.0, 20000, 2100000), run_info(1, 2)),
        "model_parallel": (job("model_parallel",
                               [task(0, 1, 3, 40.0, "127.0.0.1:5000", 40.0,
                                     peer_sent=6_000_000, peer_received=6_000_000),
                                task(1, 4, 6, 40.0, "127.0.0.1:5001", 40.0)],
                               0.86, curve(2.0), 40.0, 20000, 2100000, 24_600_000),
                           run_info(2, 1)),
        "partitioned": (job("partitioned",
                            [task(0, 1, 3, 12.0, "127.0.0.1:5000", 12.0),
                             task(1, 4, 6, 8.0, "127.0.0.1:5001", 8.0)],
                            0.858, curve(0.6), 12.0, 20000, 2100000), run_info(2, 1)),
        "model_parallel_1f1b": (pipelined(job("model_parallel_1f1b",
                                    [task(0, 1, 3, 24.0, "127.0.0.1:5000", 24.0,
                                          peer_sent=6_400_000, peer_received=6_400_000),
                                     task(1, 4, 6, 24.0, "127.0.0.1:5001", 24.0)],
                                    0.86, curve(1.2), 24.0, 20000, 2100000, 25_600_000),
                                    8, [0.14, 0.62]), run_info(2, 1)),
        "partitioned_sequential": (job("partitioned_sequential",
                                       [task(0, 1, 3, 12.0, "127.0.0.1:5000", 12.0),
                                        task(1, 4, 6, 8.0, "127.0.0.1:5001", 8.0)],
                                       0.855, curve(1.0), 20.0, 20000, 2100000),
                                   run_info(2, 1)),
    }
    results = {
        "date": "2024-05-01T10:00:00+00:00", "command": "scripts/bench --epochs 2",
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "memory_bytes": 8 << 30,
                    "blas": "openblas"},
        "spec_path": "examples/fashion_mnist.json", "spec": SPEC,
        "evaluations_per_epoch": 2, "matmul_size": 1024, "matmul_gflops": matmul,
        "done_when_configuration": report.done_when_configuration(SPEC, 2, 2, 2),
        # finish_results derives "modes" from the raw jobs, as --report_only.
        "jobs": {mode: {"job": j, "run_info": info} for mode, (j, info) in jobs.items()},
        "in_process": {"threads": 1, "test_accuracy": 0.858, "joined_test_accuracy": 0.858,
                       "wall_seconds": 18.0, "parallel_wall_seconds": 10.0,
                       "process_seconds": 25.0,
                       "segments": [{"segment_index": 0, "wall_seconds": 10.0},
                                    {"segment_index": 1, "wall_seconds": 8.0}]},
    }
    return report.finish_results(results)


class AnalyticCostTest(unittest.TestCase):
    def test_matches_pnn_accounting(self):
        # Figures pnn-train reported for the paper's network cut after 3.
        first = report.analytic_cost([784, 256, 256, 256], False, 128)
        self.assertEqual(first["parameter_count"], 332544)
        self.assertEqual(first["activation_bytes"], 1056768)
        self.assertEqual(first["training_flops_per_sample"], 1990656)
        self.assertEqual(first["training_bytes"], 16 * 332544 + 1056768)

    def test_segments_and_cuts(self):
        self.assertEqual(report.segment_layers(6, [3]), [(1, 3), (4, 6)])
        self.assertEqual(run_bench.deep_cuts(8, 2), [4])
        self.assertEqual(run_bench.deep_cuts(8, 3), [3, 5])
        self.assertEqual(run_bench.deep_cuts(8, 4), [2, 4, 6])

    def test_timestamp(self):
        self.assertAlmostEqual(report.parse_timestamp("1970-01-01T00:00:01.5Z"), 1.5)
        self.assertAlmostEqual(
            report.parse_timestamp("1970-01-01T01:00:00.123456789+01:00"), 0.123456789)
        self.assertIsNone(report.parse_timestamp(""))


class SummaryTest(unittest.TestCase):
    def setUp(self):
        self.results = fixture_results()
        self.modes = self.results["modes"]

    def test_summary_fields(self):
        part = self.modes["partitioned"]
        for key in ("test_accuracy", "wall_seconds", "time_to_90_seconds",
                    "network_bytes", "max_segment_training_memory_bytes", "mfu",
                    "cpu_seconds_to_90"):
            self.assertIn(key, part)
        self.assertEqual(part["network_bytes"], 2120000)
        self.assertEqual(part["checkpoint_bytes"], 8000000)
        self.assertEqual(self.modes["model_parallel"]["network_bytes"],
                         2120000 + 24_600_000)
        self.assertEqual(part["max_segment_training_memory_bytes"],
                         16 * 332544 + 1056768)
        self.assertEqual([p["epoch"] for p in part["accuracy_per_epoch"]], [1, 2])

    def test_time_to_90(self):
        # 90% of 0.86 = 0.774: the second point of each curve.
        self.assertAlmostEqual(self.modes["conventional"]["time_to_90_seconds"], 10.0)
        self.assertAlmostEqual(self.modes["partitioned"]["time_to_90_seconds"], 6.0)
        self.assertAlmostEqual(self.modes["partitioned"]["cpu_seconds_to_90"], 11.4)
        self.assertAlmostEqual(self.modes["model_parallel"]["time_to_90_seconds"], 20.0)

    def test_mfu(self):
        conv = self.modes["conventional"]
        flops = 3 * 2 * sum(a * b for a, b in zip(WIDTHS, WIDTHS[1:])) * 12000.0 * 20.0
        self.assertAlmostEqual(conv["model_training_flops"], flops)
        self.assertAlmostEqual(conv["mfu"], flops / 20.0 / 1e9 / 80.0)

    def test_targets(self):
        verdicts = {t["target"]: t["verdict"] for t in self.results["targets"]}
        self.assertEqual(verdicts["partitioned test accuracy within 1 pp of conventional"],
                         "PASS")
        self.assertEqual(verdicts["partitioned network bytes <= 1% of model-parallel's"],
                         "MISS")  # 2.12 MB vs 26.7 MB: 7.9%
        self.assertEqual(verdicts["partitioned wall time <= 0.7x model-parallel's"], "PASS")
        self.assertEqual(verdicts["partitioned time-to-90% <= 0.7x model-parallel's"], "PASS")
        self.assertEqual(
            verdicts["partitioned wall time <= conventional's (equal hardware)"], "PASS")
        memory = next(t for t in self.results["targets"] if "memory" in t["target"])
        conventional = report.analytic_cost(WIDTHS, False, BATCH)["training_bytes"]
        self.assertAlmostEqual(memory["value"], (16 * 332544 + 1056768) / conventional)

    def test_pipeline_targets(self):
        targets = {t["target"]: t for t in self.results["targets"]}
        bubble = targets["model_parallel_1f1b: measured bubble within 5 points of "
                         "(K-1)/(M+K-1)"]
        self.assertAlmostEqual(bubble["value"], abs(0.14 - 1 / 9))
        self.assertEqual(bubble["verdict"], "PASS")
        speed = targets["model_parallel_1f1b: wall time <= 0.65x the one-micro-batch "
                        "pipeline's"]
        self.assertAlmostEqual(speed["value"], 0.6)
        self.assertEqual(speed["verdict"], "PASS")
        # Against the best micro-batched pipeline: 12 s vs 24 s.
        wall = targets["partitioned wall time <= 0.8x model_parallel_1f1b's"]
        self.assertAlmostEqual(wall["value"], 0.5)
        # GPipe did not run: not applicable, not a miss.
        self.assertEqual(targets["model_parallel_gpipe: measured bubble within 5 points "
                                 "of (K-1)/(M+K-1)"]["verdict"], "N/A")
        text = report.render_markdown(self.results)
        self.assertIn("## Pipeline schedules", text)
        self.assertIn("| model_parallel_1f1b | 1F1B | 8 | 3 | 24.0 | 0.600x | 14.0% | 11.1% | "
                      "14.0%, 62.0% |", text)

    def test_wide_preset_section(self):
        wide = fixture_results()
        wide.pop("modes", None)  # re-derived from the raw jobs
        wide["command"] = "scripts/bench --preset wide"
        wide = report.finish_wide(wide)
        self.assertIn("model_parallel_1f1b", wide["modes"])
        self.assertTrue(any(t["target"].startswith("model_parallel_1f1b: wall time")
                            for t in wide["targets"]))
        text = report.render_markdown(None, wide=wide)
        self.assertIn("## Wide network", text)
        self.assertIn("`scripts/bench --preset wide`", text)
        self.assertIn("### Pipeline schedules (wide)", text)
        self.assertIn("| model_parallel_1f1b | 1F1B | 8 | 3 | 24.0 | 0.600x |", text)

    def test_mode_spec_of_pipelines_and_auto_cut(self):
        one = run_bench.mode_spec(SPEC, "model_parallel", 4, 8)
        self.assertEqual(one["pipeline"], {"micro_batches": 1})
        gpipe = run_bench.mode_spec(SPEC, "model_parallel_gpipe", 4, 8)
        self.assertEqual(gpipe["pipeline"], {"schedule": "PIPELINE_SCHEDULE_GPIPE",
                                             "micro_batches": 8})
        # Pipelines run on the cut balancing the stages' FLOPs.
        for spec in (one, gpipe):
            self.assertNotIn("cut_after_layers", spec["model"])
            self.assertEqual(spec["auto_cut"], {"segments": 2,
                                                "objective": "BALANCE_OBJECTIVE_FLOPS"})
        auto = run_bench.mode_spec(run_bench.with_defaults(SPEC), "partitioned_auto", 4)
        self.assertNotIn("cut_after_layers", auto["model"])
        self.assertEqual(auto["auto_cut"], {"segments": 2,
                                            "objective": "BALANCE_OBJECTIVE_FLOPS"})
        self.assertNotIn("pipeline", run_bench.in_process_spec(gpipe))
        measured = run_bench.mode_spec(run_bench.with_defaults(SPEC),
                                       "partitioned_measured", 4)
        self.assertEqual(measured["auto_cut"]["objective"],
                         "BALANCE_OBJECTIVE_MEASURED_TIME")
        recovery = run_bench.mode_spec(run_bench.with_defaults(SPEC),
                                       "partitioned_recovery", 4)
        self.assertEqual(recovery["recovery"], {"epochs": 1})
        self.assertEqual(recovery["model"]["cut_after_layers"], [3])

    def test_recovery_and_measured_cut_are_reported(self):
        partitioned = dict(self.results["jobs"]["partitioned"]["job"])
        partitioned["joined_test_accuracy"] = 0.85
        partitioned["recovery_seconds"] = 3.5
        partitioned["cut_plan"] = {
            "request": {"segments": 2,
                        "objective": "BALANCE_OBJECTIVE_MEASURED_TIME"},
            "cut_after_layers": [2], "profiled_on": "worker w-1 (cpu, 1 thread)",
            "segments": [{"measured_seconds_per_batch": 0.002},
                         {"measured_seconds_per_batch": 0.003}]}
        summary = report.summarize_job("partitioned_recovery", partitioned,
                                       self.results["jobs"]["partitioned"]["run_info"],
                                       {})
        self.assertAlmostEqual(summary["joined_test_accuracy"], 0.85)
        self.assertEqual(summary["profiled_on"], "worker w-1 (cpu, 1 thread)")
        self.assertEqual(summary["measured_segment_seconds_per_batch"], [0.002, 0.003])
        modes = dict(self.modes, partitioned_recovery=summary)
        targets = {t["target"]: t for t in report.check_targets(modes)}
        recovery = targets["recovery.epochs 1 runs on the workers; final accuracy "
                           "beside the joined accuracy"]
        self.assertEqual(recovery["verdict"], "REPORTED")
        self.assertAlmostEqual(recovery["value"], summary["test_accuracy"] - 0.85)
        measured = targets["partitioned with the cut by measured time: wall time "
                           "and accuracy beside conventional's"]
        self.assertEqual(measured["verdict"], "N/A")  # that mode did not run

    def test_missing_mode_is_not_applicable(self):
        modes = dict(self.modes)
        modes["model_parallel"] = {"mode": "model_parallel", "state": "ERROR",
                                   "error": "unsupported"}
        verdicts = {t["target"]: t["verdict"] for t in report.check_targets(modes)}
        self.assertEqual(verdicts["partitioned wall time <= 0.7x model-parallel's"], "N/A")

    def test_failed_job_counts_for_nothing(self):
        results = fixture_results()
        raw = results["jobs"]["model_parallel"]
        raw["job"]["state"] = "JOB_STATE_FAILED"
        raw["job"]["message"] = "stage 2 lost"
        report.finish_results(results)
        verdicts = {t["target"]: t["verdict"] for t in results["targets"]}
        self.assertEqual(verdicts["partitioned network bytes <= 1% of model-parallel's"],
                         "N/A")
        text = report.render_markdown(results)
        self.assertIn("`model_parallel` did not succeed: stage 2 lost", text)
        self.assertIn("| model_parallel | 2 x 1 | **failed** |", text)

    def test_overhead(self):
        overhead = self.results["orchestration_overhead"]
        self.assertAlmostEqual(overhead["training_overhead_seconds"], 2.0)
        self.assertAlmostEqual(overhead["segments"][0]["ratio"], 1.2)

    def test_cross_check(self):
        check = self.results["cross_check"]
        self.assertTrue(all(row["match"] for row in check["memory"]))
        # 6000 samples x 2 (activations, gradients) x 256 x 4 B x 2 epochs.
        self.assertEqual(check["wire"]["model_parallel_peer_bytes"], 6000 * 2 * 256 * 4 * 2)
        self.assertEqual(check["wire"]["batches_per_epoch"], 47)

    def test_markdown(self):
        text = report.render_markdown(self.results, {
            "command": "scripts/bench --preset ablation", "date": "today", "threads": 2,
            "rows": [{"group": "kappa", "setting": "1", "test_accuracy": 0.85,
                      "joined_test_accuracy": 0.85, "parallel_wall_seconds": 10,
                      "wall_seconds": 18}],
            "conventional": [{"network": "784-256x5-10", "test_accuracy": 0.86,
                              "wall_seconds": 30}]})
        for heading in ("## How it was produced", "## Results", "## Targets",
                        "## Accuracy per epoch", "## Training memory per worker",
                        "## Network", "## Model FLOP utilisation",
                        "## Orchestration overhead", "## Ablations",
                        "## Scale beyond this machine, on paper"):
            self.assertIn(heading, text)
        self.assertIn("**MISS**", text)
        self.assertIn("Test CPU", text)

    def test_plots(self):
        if report.gnuplot_terminal() is None:
            self.skipTest("gnuplot not installed")
        out = tempfile.mkdtemp(prefix="pnn-bench-test-")
        try:
            plots = report.write_plots(self.results, out)
            for name in ("accuracy_vs_time", "memory_per_worker"):
                with open(plots[name], "rb") as png:
                    self.assertEqual(png.read(4), b"\x89PNG")
        finally:
            shutil.rmtree(out)


class SpecTest(unittest.TestCase):
    def test_mode_specs(self):
        spec = run_bench.mode_spec(SPEC, "partitioned_sequential", 4)
        self.assertEqual(spec["parallelism"], "PARALLELISM_PARTITIONED")
        self.assertEqual(spec["sil"]["input_mode"], "INPUT_MODE_PREVIOUS_OUTPUTS")
        self.assertEqual(spec["evaluations_per_epoch"], 4)
        local = run_bench.in_process_spec(spec)
        self.assertNotIn("parallelism", local)
        self.assertNotIn("evaluations_per_epoch", local)
        self.assertEqual(local["sil"]["input_mode"], "INPUT_MODE_SYNTHETIC_LABELS")

    def test_ablation_plan_runs_defaults_once(self):
        args = run_bench.parse_args(["--preset", "ablation"])
        base = run_bench.with_defaults(SPEC)
        keys = [run_bench.ablation_key(extra, base)
                for _, _, extra in run_bench.ablation_plan(args)]
        self.assertEqual(len(keys), 20)
        self.assertEqual(keys.count(()), 5)  # kappa 1, uniform, noise 0, cut 3, recovery 0


if __name__ == "__main__":
    unittest.main()
