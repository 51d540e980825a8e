"""Runs a W&B grid sweep file locally, without a W&B server.

    python -m experiments.sweep experiments/sweeps/grid.yaml --out runs/sweep_grid

The base config is the first `.yaml` argument of the sweep's `command` (or
`--config`); every grid point becomes `python -m experiments.run`-style
overrides (`method=rigl`, `sparsity=0.9`, `seed=0`, ...). All runs are written
to one folder, with the same runs.csv, summary.md and plots as the runner.
W&B logging follows the base config and WANDB_MODE (offline without an API
key), with the sweep's name as the W&B group.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments import config as config_lib  # noqa: E402
from experiments.run import execute, plan, variant_tag  # noqa: E402


def grid_points(sweep: Mapping) -> list[dict]:
    """Every combination of a grid sweep's parameters, in file order."""
    if sweep.get("method") != "grid":
        raise config_lib.ConfigError(
            f"The local executor runs grid sweeps only; this sweep has method="
            f"{sweep.get('method')!r}. Run it with W&B: `wandb sweep FILE` then "
            "`wandb agent SWEEP_ID`."
        )
    names, choices = [], []
    for name, spec in (sweep.get("parameters") or {}).items():
        if not isinstance(spec, Mapping) or not ("value" in spec or "values" in spec):
            raise config_lib.ConfigError(
                f"Sweep parameter {name!r} must have `value` or `values` in a grid "
                f"sweep. Received: {spec!r}."
            )
        names.append(name)
        choices.append(spec["values"] if "values" in spec else [spec["value"]])
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def base_config(sweep: Mapping) -> str:
    """The first .yaml/.yml argument of the sweep's `command`."""
    for arg in sweep.get("command") or []:
        if isinstance(arg, str) and arg.endswith((".yaml", ".yml")):
            return arg
    raise config_lib.ConfigError(
        "The sweep's `command` names no base config (.yaml); pass --config CONFIG."
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep",
                                description="Run a W&B grid sweep file locally.")
    p.add_argument("sweep", help="sweep YAML, e.g. experiments/sweeps/grid.yaml")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="base config (default: from the sweep's command)")
    p.add_argument("--resume", action="store_true",
                   help="keep the results already in OUT/results/ and skip their runs")
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    args, rest = p.parse_known_args(argv)

    def make_jobs():
        sweep = config_lib.read_yaml(args.sweep, "sweep file")
        base = args.config or base_config(sweep)
        extra = config_lib.parse_overrides(rest)
        jobs = []
        for point in grid_points(sweep):
            overrides = {**point, **extra}
            if sweep.get("name"):
                overrides.setdefault("wandb.group", sweep["name"])
            cfg = config_lib.load(base, overrides)
            jobs += plan(cfg, variant_tag(point))
        return list({job.run_id: job for job in jobs}.values()), args.out

    return execute(make_jobs, dry_run=args.dry_run, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
