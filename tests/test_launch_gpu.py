"""Tests for experiments/launch_gpu.py: runs split over worker processes
sharing a GPU, each run trained once, results merged, `--resume` continues."""

import os
from pathlib import Path

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
ROOT = Path(__file__).resolve().parents[1]

import pytest  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import launch_gpu, report, run  # noqa: E402

pytestmark = pytest.mark.tensorflow_only  # experiments (TF-MOT in the method table)

TINY = ROOT / "experiments" / "configs" / "tiny.yaml"
CNN = ROOT / "experiments" / "configs" / "fashion_mnist_cnn.yaml"


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_costliest_runs_are_claimed_first_and_the_estimate_counts_units():
    cfg = config_lib.load(CNN, {})
    jobs = launch_gpu.order(run.plan(cfg), cfg["epochs"])
    assert len(jobs) == 207
    assert {j.spec.method for j in jobs[:24]} == {"rigl_2x"}  # 60 epochs: first
    assert all(j.cfg["epochs"] == 30 for j in jobs[24:])
    plan = launch_gpu.estimate(jobs, cfg["epochs"], workers=32, unit_seconds=75.0)
    assert plan["units"] == 231  # 207 runs, rigl_2x counted twice
    assert plan["seconds"] == pytest.approx(231 * 75.0 / 32)
    assert launch_gpu.estimate(jobs[:1], 30, workers=32, unit_seconds=75.0)["seconds"] == 150.0


def test_each_worker_gets_its_gpu_memory_share_and_threads():
    envs = [launch_gpu.worker_env(k, 4, ["0", "1"], None, cores=16, base={}) for k in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in envs} == {"0.450"}  # 2 per GPU
    assert {e["TF_NUM_INTRAOP_THREADS"] for e in envs} == {"4"}
    assert all(e["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for e in envs)
    many = launch_gpu.worker_env(0, 32, ["0"], 0.02, cores=16, base={})
    assert many["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.020"
    assert many["OMP_NUM_THREADS"] == "1"


def test_a_run_is_claimed_by_one_process_only(tmp_path):
    cfg = config_lib.load(TINY, {"methods": ["dense", "static"]})
    jobs = run.plan(cfg)
    first, second = launch_gpu.claimer(tmp_path), launch_gpu.claimer(tmp_path)
    assert [first(j) for j in jobs] == [True, True]
    assert [second(j) for j in jobs] == [False, False]


def test_bad_worker_count_exits_2(capsys):
    assert launch_gpu.main([str(TINY), "--workers", "0"]) == 2
    assert "--workers must be at least 1; got 0" in capsys.readouterr().err


@pytest.mark.slow  # two worker processes, end to end
def test_two_workers_train_each_run_once_and_merge(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(TINY), "--out", str(out), "--workers", "2",
            "--methods", "[dense, static]"]
    assert launch_gpu.main(argv) == 0
    rows = report.read_csv(out / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == ["dense-none-s0-seed0", "static-erk-s0.9-seed0"]
    logs = [(out / "launch" / f"worker-{k}.log").read_text() for k in range(2)]
    assert sum(log.count("-> test_accuracy=") for log in logs) == 2  # each run once
    assert "2/2 runs done" in capsys.readouterr().out
    # A second launch with --resume finds every result and trains nothing.
    assert launch_gpu.main([*argv, "--resume"]) == 0
    logs = [(out / "launch" / f"worker-{k}.log").read_text() for k in range(2)]
    assert sum(log.count("-> test_accuracy=") for log in logs) == 0
    assert sum(log.count("skipped (--resume)") for log in logs) == 4  # 2 runs x 2 workers
    assert len(report.read_csv(out / "runs.csv")) == 2
