"""Runs a comparison: every method × sparsity × seed of a YAML config.

    python -m experiments.run experiments/configs/digits.yaml --out runs/digits

Writes DIR/runs.csv (one row per run), DIR/histories.json (per-epoch logs),
DIR/summary.md (mean ± std over seeds, also printed) and PNG plots:
accuracy_vs_sparsity.png, training_curves.png, layer_density.png.

Fields can be overridden after the config, sweep style:
`--method rigl --sparsity 0.9 --seed 0`, `--update_freq=50`,
`--optimizer.learning_rate 0.01`, `--wandb.mode disabled`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python experiments/run.py` (e.g. from a W&B agent)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments import config as config_lib  # noqa: E402
from experiments import data as data_lib  # noqa: E402
from experiments import methods, report  # noqa: E402
from experiments.train import Reference, RunSpec, train_run  # noqa: E402

# Overrides that do not make a run a different variant: what the run id or
# the logs already show.
SWEEP_KEYS = {"method", "methods", "sparsity", "sparsities", "seed", "seeds",
              "distribution", "distributions", "magnitude_distribution", "verbose",
              "name", "wandb", "block", "export"}  # the run id shows `block`


def variant_tag(overrides: Mapping) -> str:
    """`k=v,...` of the overrides that change a run (e.g. update_freq=50)."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()
                    if k.split(".")[0] not in SWEEP_KEYS)


@dataclasses.dataclass
class Job:
    """One run to train: its config, what varies, and a tag for sweep variants."""

    cfg: dict
    spec: RunSpec
    tag: str = ""

    @property
    def run_id(self) -> str:
        return self.spec.run_id + (f"-{self.tag}" if self.tag else "")


def plan(cfg: Mapping, tag: str = "") -> list[Job]:
    """The runs of one config: dense once per seed, the others per sparsity.

    Seed-major, so that a partial runs.csv already holds whole tables.
    """
    jobs = []
    for seed, name in itertools.product(cfg["seeds"], cfg["methods"]):
        method = methods.get(name)
        sparsities = cfg["sparsities"] if method.sparse else [0.0]
        block = tuple(cfg["block"]) if cfg.get("block") and method.sparse else None
        for dist, s in itertools.product(method.distributions(cfg), sparsities):
            jobs.append(Job(method.run_config(cfg), RunSpec(name, dist, s, seed, block), tag))
    return jobs


def run_jobs(
    jobs: Sequence[Job],
    out_dir: str | Path,
    *,
    resume: bool = False,
    print_fn: Callable[[str], None] = print,
    claim: Callable[[Job], bool] | None = None,
    merge: bool = True,
) -> list[dict]:
    """Trains `jobs` and writes DIR/results/<run id>.json per run, then merges
    them into runs.csv, histories.json, summary.md and plots.

    Every run writes its own file, so several processes (W&B sweep agents) can
    share DIR; each merge reads all the files there. Without `resume`, earlier
    results in DIR are removed first; with it, runs that have a file are skipped.
    Data is loaded, and every schedule checked, before the first run trains.
    `claim(job)`, when given, is asked before each run trains; a run it
    refuses (another process took it) is skipped. With `merge=False` nothing
    is merged (`merge_results` does it later) and no rows are returned.
    """
    out = Path(out_dir)
    jobs = list({job.run_id: job for job in jobs}.values())
    datasets, schedules = prepare(jobs)
    results = out / report.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    if not resume:
        stale = sorted(results.glob("*.json"))
        for path in stale:
            path.unlink()
        if stale:
            print_fn(f"Removed {len(stale)} earlier result(s) from {results} "
                     "(--resume keeps them).")
    references = {}
    for job in jobs:
        key = _data_key(job.cfg)
        ref_key = (key, json.dumps(job.cfg["model"], sort_keys=True))
        if ref_key not in references:
            data, _ = datasets[key]
            references[ref_key] = Reference.build(job.cfg["model"], data.input_shape,
                                                  data.num_classes)
    for i, (job, schedule) in enumerate(zip(jobs, schedules), start=1):
        s = job.spec
        print_fn(f"run {i}/{len(jobs)}: method={s.method}, distribution={s.distribution}, "
                 f"sparsity={s.sparsity:g}, seed={s.seed}"
                 + (f", {job.tag}" if job.tag else ""))
        if report.result_path(out, job.run_id).is_file():
            print_fn(f"  already in {report.RESULTS}/; skipped (--resume)")
            continue
        if claim is not None and not claim(job):
            print_fn("  taken by another process; skipped")
            continue
        key = _data_key(job.cfg)
        data, val_data = datasets[key]
        ref = references[(key, json.dumps(job.cfg["model"], sort_keys=True))]
        start = time.perf_counter()
        row, history = train_run(s, job.cfg, data, val_data, ref, schedule=schedule,
                                 out_dir=out)
        row["run_id"], row["variant"] = job.run_id, job.tag
        report.write_result(out, job.run_id, row, history, job.cfg)
        print_fn(f"  -> test_accuracy={row['test_accuracy']:.4f}, "
                 f"achieved_sparsity={row['achieved_sparsity']:.4f}, "
                 f"epoch_seconds={row['epoch_seconds']:.3f}, "
                 f"flops_ratio={row['flops_ratio']:.3f} "
                 f"({time.perf_counter() - start:.1f} s)")
    if not merge:
        return []
    return merge_results(jobs, out, datasets, print_fn=print_fn)


def merge_results(jobs: Sequence[Job], out_dir: str | Path, datasets: dict | None = None, *,
                  print_fn: Callable[[str], None] = print) -> list[dict]:
    """Merges every result file in DIR into runs.csv, summary.md and the plots
    (the layer densities of `jobs`' config); returns the rows."""
    out = Path(out_dir)
    all_rows = report.build(out, print_fn=print_fn)
    first = jobs[0].cfg
    if datasets is None:
        datasets = {_data_key(first): _prepare(first)}
    data, _ = datasets[_data_key(first)]
    report.plot_layer_density(
        layer_densities(first, data, sorted({j.spec.sparsity for j in jobs} - {0.0})
                        or first["sparsities"]),
        out / "layer_density.png")
    print_fn(f"Wrote {out / 'runs.csv'}, {out / 'summary.md'} and plots "
             "accuracy_vs_sparsity.png, training_curves.png, layer_density.png "
             f"in {out}.")
    return all_rows


def prepare(jobs: Sequence[Job]) -> tuple[dict, list[tuple[int, int]]]:
    """Loads every dataset the jobs need and resolves every job's update schedule.

    Returns:
        ({data key: (data, validation data)}, [(begin, end) step of each job]).

    Raises:
        ConfigError: listing every job whose schedule does not fit in training.
        DatasetUnavailableError: when a dataset cannot be loaded.
    """
    datasets, schedules, problems, checked = {}, [], {}, set()
    for job in jobs:
        key = _data_key(job.cfg)
        if key not in datasets:
            datasets[key] = _prepare(job.cfg)
        data, _ = datasets[key]
        block_key = (key, json.dumps([job.cfg["model"], job.cfg.get("block")], sort_keys=True))
        if job.spec.block is not None and block_key not in checked:
            config_lib.check_block_fits(job.cfg, data.input_shape, data.num_classes)
            checked.add(block_key)
        steps = -(-len(data.x_train) // job.cfg["batch_size"])
        if not methods.get(job.spec.method).schedule:
            schedules.append((0, 0))  # no mask updates: nothing to fit in training
            continue
        try:
            schedules.append(config_lib.schedule_steps(job.cfg, steps))
        except config_lib.ConfigError as err:
            for path, msg in err.problems:
                problems.setdefault((path, msg), []).append(job.run_id)
            schedules.append(None)
    if problems:
        raise config_lib.ConfigError(
            [(path, f"{msg} (runs: {', '.join(ids)})") for (path, msg), ids in problems.items()],
            jobs[0].cfg["name"])
    return datasets, schedules


def layer_densities(cfg: Mapping, data, sparsities: Sequence[float]) -> dict:
    """{sparsity: {distribution: {layer: density}}} of fresh dst.sparsify masks."""
    import dst
    from experiments import models

    dists = list(dict.fromkeys(["uniform", "erk", *cfg["distribution"]]))
    out = {}
    for s in sparsities:
        out[s] = {}
        for dist in dists:
            model = models.build(cfg["model"], data.input_shape, data.num_classes)
            dst.sparsify(model, s, dist, seed=0)
            rows = dst.summary(model, print_fn=lambda *_: None)[:-1]
            out[s][dist] = {r["path"].rsplit("/", 1)[0]: r["density"] for r in rows}
    return out


def _data_key(cfg) -> tuple:
    return tuple(cfg[k] for k in ("dataset", "data_dir", "max_train_samples",
                                  "max_test_samples", "val_split"))


def _prepare(cfg):
    """Loads the data; holds out `val_split` of it, else validates on the test set."""
    data = data_lib.load(cfg["dataset"], data_dir=cfg["data_dir"],
                         max_train_samples=cfg["max_train_samples"],
                         max_test_samples=cfg["max_test_samples"])
    if cfg["val_split"] > 0:
        n_val = max(1, int(round(cfg["val_split"] * len(data.x_train))))
        val = (data.x_train[-n_val:], data.y_train[-n_val:])
        data = dataclasses.replace(data, x_train=data.x_train[:-n_val],
                                   y_train=data.y_train[:-n_val])
        return data, val
    return data, (data.x_test, data.y_test)


def _config_backend(path) -> str | None:
    """The `backend:` field of a config file, read before Keras is imported."""
    try:
        import yaml

        raw = yaml.safe_load(Path(path).read_text())
    except Exception:  # noqa: BLE001 - config_lib.load reports a bad file properly
        return None
    return raw.get("backend") if isinstance(raw, dict) else None


def use_backend(name) -> None:
    """Runs Keras on backend `name` (tensorflow, jax or torch).

    Keras fixes its backend when first imported: before that, this sets
    KERAS_BACKEND; after, a different backend is a config error.
    """
    if not isinstance(name, str) or name.lower() not in config_lib.BACKENDS:
        return  # config_lib.load reports a bad value
    name = name.lower()
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = name
        return
    import keras

    if keras.backend.backend() != name:
        raise config_lib.ConfigError(
            f"backend: {name!r} was asked for, but this process already runs Keras on "
            f"{keras.backend.backend()!r}. Run `KERAS_BACKEND={name} python -m "
            "experiments.run ...` instead."
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description="Compare " + ", ".join(methods.NAMES) + " training (or any method "
                    "registered with dst.updaters.register).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --field value (or --field=value) overrides a config field; "
               "values are read as YAML.\n--method/--sparsity/--seed set one value "
               "(W&B sweep style); --optimizer.learning_rate=0.01 sets a nested one.\n\n"
               "Config fields:\n" + config_lib.field_help(),
    )
    p.add_argument("config", help="YAML config, e.g. experiments/configs/digits.yaml")
    p.add_argument("--out", help="output folder (default: runs/<config name>)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE (a dotted name on the Python path) before the config "
                        "is read, so the dst updaters it registers are methods by name; "
                        "repeatable")
    p.add_argument("--resume", action="store_true",
                   help="keep the results already in OUT/results/ and skip their runs")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check (config, data, update schedules) and list the "
                        "runs, without training")
    return p


def execute(make_jobs: Callable[[], tuple[list, Path]], *, dry_run: bool, resume: bool) -> int:
    """Plans with `make_jobs() -> (jobs, out)`, then lists or runs the jobs.

    The command-line tail shared by this runner and `experiments.sweep`:
    a bad config (every problem listed), an impossible schedule or an
    unavailable dataset becomes an error message and exit status 2, before
    any training.
    """
    try:
        jobs, out = make_jobs()
        if dry_run:
            prepare(jobs)
            for i, job in enumerate(jobs, start=1):
                print(f"run {i}/{len(jobs)}: {job.run_id}")
            return 0
        run_jobs(jobs, out, resume=resume)
    except (config_lib.ConfigError, data_lib.DatasetUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)

    def make_jobs():
        overrides = config_lib.parse_overrides(rest)
        use_backend(overrides.get("backend") or _config_backend(args.config))
        for module in args.imports:
            _import(module)
        cfg = config_lib.load(args.config, overrides)
        return plan(cfg, variant_tag(overrides)), args.out or Path("runs") / cfg["name"]

    return execute(make_jobs, dry_run=args.dry_run, resume=args.resume)


def _import(module: str) -> None:
    """Imports a `--import` module; one that is not found is a config error."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise config_lib.ConfigError(
            f"--import {module}: no module {err.name!r} on the Python path "
            f"(sys.path starts {sys.path[:3]}); run from the folder that holds it, or add "
            "that folder to PYTHONPATH.") from None


if __name__ == "__main__":
    sys.exit(main())
