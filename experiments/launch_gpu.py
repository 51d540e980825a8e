"""Runs a config's table as many processes sharing one GPU (or a few).

    python -m experiments.launch_gpu experiments/configs/fashion_mnist_cnn.yaml \\
        --out runs/fashion_mnist_cnn --workers 32

The runs of a config (method × distribution × sparsity × seed, as
`experiments.run` plans them) are small: ResNet-8 on Fashion-MNIST keeps a
large GPU busy a few percent of the time, so one process after the other
leaves it idle. This launcher starts `--workers` processes, each an
`experiments.run` of the same config that takes the next run no other
worker has taken (an atomic claim file per run, in the order of decreasing
cost: `rigl_2x` first), so the workers stay busy until the table is done.
Each worker:

- sees the GPU `--gpus` gives it (`CUDA_VISIBLE_DEVICES`, round robin over
  the list);
- lets TensorFlow's memory grow (`TF_FORCE_GPU_ALLOW_GROWTH`) and gives JAX
  a fixed share (`XLA_PYTHON_CLIENT_MEM_FRACTION`, `--memory-fraction`,
  0.9 / workers per GPU by default), so every process fits beside the
  others;
- runs its CPU ops on `cores / workers` threads (at least 1);
- writes its log to OUT/launch/worker-<k>.log and one result file per run
  (OUT/results/<run id>.json, as `experiments.run`).

When every worker has ended, the results are merged (runs.csv, summary.md,
plots), as `python -m experiments.report OUT` would. `--resume` keeps the
results already in OUT and trains only the missing runs (a killed launch
continues where it stopped); without it, earlier results are removed first.
`--dry-run` checks the config and prints the plan and the time estimate.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python experiments/launch_gpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The launcher itself trains nothing: keep it off the GPU's memory.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

LAUNCH = "launch"  # OUT/launch: claims and worker logs
#: Seconds one process takes for a run of the config's epochs (a "unit"),
#: on a large GPU shared by the workers: the estimate in docs/experiments.md.
UNIT_SECONDS = 75.0


def order(jobs: Sequence, base_epochs: int) -> list:
    """The jobs in claim order: the costliest first (longest-processing-time
    first, so no long run starts last), the plan's order among equals."""
    return sorted(jobs, key=lambda job: -job.cfg["epochs"] / base_epochs)


def estimate(jobs: Sequence, base_epochs: int, workers: int,
             unit_seconds: float = UNIT_SECONDS) -> dict:
    """The expected wall time of `jobs` on `workers` processes: the total
    work over the workers, or the longest run if that is longer."""
    units = [job.cfg["epochs"] / base_epochs for job in jobs]
    total = sum(units) * unit_seconds
    longest = max(units, default=0.0) * unit_seconds
    return {"runs": len(jobs), "units": sum(units), "workers": workers,
            "seconds": max(total / max(workers, 1), longest)}


def worker_env(k: int, workers: int, gpus: Sequence[str], memory_fraction: float | None,
               cores: int, base: Mapping[str, str] | None = None) -> dict:
    """The environment of worker `k`: its GPU, its memory share, its threads."""
    env = dict(os.environ if base is None else base)
    per_gpu = math.ceil(workers / max(1, len(gpus))) if gpus else workers
    fraction = memory_fraction if memory_fraction is not None else 0.9 / per_gpu
    threads = str(max(1, cores // max(1, workers)))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
    env.update({
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.3f}",
        "OMP_NUM_THREADS": threads,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "3"),
        "WANDB_SILENT": "true",
    })
    return env


def claimer(out: Path) -> Callable:
    """`claim(job)`: True for the one process that creates the job's claim file."""
    folder = out / LAUNCH / "claims"
    folder.mkdir(parents=True, exist_ok=True)

    def claim(job) -> bool:
        try:
            os.close(os.open(folder / job.run_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    return claim


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.launch_gpu",
        description="Run a config's runs as parallel worker processes on one or more GPUs, "
                    "then merge the results.",
        epilog="Any other --field value overrides a config field, as in experiments.run.")
    p.add_argument("config", help="YAML config, e.g. experiments/configs/fashion_mnist_cnn.yaml")
    p.add_argument("--out", help="output folder (default: runs/<config name>)")
    p.add_argument("--workers", type=int, default=32,
                   help="worker processes (default 32: the estimate for about 8 minutes of "
                        "fashion_mnist_cnn.yaml on one H200-class GPU)")
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPU ids given to the workers round robin "
                        "(default: CUDA_VISIBLE_DEVICES as it is, else 0)")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="JAX's memory share per worker (default 0.9 / workers per GPU)")
    p.add_argument("--unit-seconds", type=float, default=UNIT_SECONDS,
                   help="seconds per run of the config's epochs, for the estimate")
    p.add_argument("--resume", action="store_true",
                   help="keep the results in OUT/results/ and train only the missing runs")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config and print the plan and the estimate only")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    if args.workers < 1:
        print(f"error: --workers must be at least 1; got {args.workers}", file=sys.stderr)
        return 2
    from experiments import config as config_lib
    from experiments import data as data_lib
    from experiments import run

    try:
        overrides = config_lib.parse_overrides(rest)
        run.use_backend(overrides.get("backend") or run._config_backend(args.config))
        cfg = config_lib.load(args.config, overrides)
        jobs = order(run.plan(cfg, run.variant_tag(overrides)), cfg["epochs"])
        out = Path(args.out or Path("runs") / cfg["name"])
        if args.worker is not None:
            run.run_jobs(jobs, out, resume=True, claim=claimer(out), merge=False)
            return 0
        datasets, _ = run.prepare(jobs)  # every check, before any worker starts
    except (config_lib.ConfigError, data_lib.DatasetUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan = estimate(jobs, cfg["epochs"], args.workers, args.unit_seconds)
    print(f"{plan['runs']} runs ({plan['units']:g} units of {cfg['epochs']} epochs) on "
          f"{args.workers} workers: about {plan['seconds'] / 60:.1f} min at "
          f"{args.unit_seconds:g} s per unit")
    if args.dry_run:
        return 0
    failed = launch(args, rest, jobs, out)
    print(f"Merging {out}")
    try:
        run.merge_results(jobs, out, datasets)
    except FileNotFoundError as err:  # no run finished
        print(f"error: {err}", file=sys.stderr)
        failed = failed or list(range(args.workers))
    if failed:
        print(f"error: worker(s) {failed} failed; see {out / LAUNCH}/worker-<k>.log. "
              "Run again with --resume to train the missing runs.", file=sys.stderr)
        return 1
    return 0


def launch(args, rest: Sequence[str], jobs: Sequence, out: Path) -> list[int]:
    """Starts the workers, reports progress until they end; returns the failed ones."""
    from experiments import report

    results = out / report.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        for path in results.glob("*.json"):
            path.unlink()
    folder = out / LAUNCH
    claims = folder / "claims"
    if claims.is_dir():  # claims of an earlier launch: runs without a result are free again
        for path in claims.iterdir():
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    gpus = (args.gpus.split(",") if args.gpus else
            [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",") if g])
    cores = os.cpu_count() or 1
    command = [sys.executable, "-m", "experiments.launch_gpu", args.config, "--out", str(out),
               *rest]
    root = str(Path(__file__).resolve().parents[1])
    procs, logs = [], []
    for k in range(args.workers):
        env = worker_env(k, args.workers, gpus, args.memory_fraction, cores)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        log = open(folder / f"worker-{k}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen([*command, "--worker", str(k)], env=env, cwd=root,
                                      stdout=log, stderr=subprocess.STDOUT))
    start, done = time.monotonic(), -1
    try:
        while any(p.poll() is None for p in procs):
            finished = sum(report.result_path(out, j.run_id).is_file() for j in jobs)
            if finished != done:
                done = finished
                print(f"  {finished}/{len(jobs)} runs done "
                      f"({(time.monotonic() - start) / 60:.1f} min)", flush=True)
            time.sleep(2.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for log in logs:
            log.close()
    print(f"Workers ended after {(time.monotonic() - start) / 60:.1f} min")
    return [k for k, p in enumerate(procs) if p.returncode != 0]


if __name__ == "__main__":
    sys.exit(main())
