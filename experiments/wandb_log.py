"""Optional Weights & Biases logging, following W&B's Keras conventions.

`wandb` is imported only when a run is logged; without it everything else works.
The mode comes from WANDB_MODE, else from the config's `wandb.mode`, else
"online" when an API key is configured (WANDB_API_KEY or ~/.netrc) and
"offline" otherwise.

Each training run is one W&B run: `group` is the experiment (the config's
`name`, or `wandb.group`), `job_type` the method, `name` the run id, and
`config` that run's own hyperparameters. Keras 3 runs log their epoch metrics
with W&B's own `WandbMetricsLogger` (keys `epoch/<metric>`, plotted against
`epoch/epoch`); TF-MOT runs train in tf_keras, whose callbacks are another
class, and log the same keys with `TfKerasMetricsLogger`. The results row
goes into the run summary. Offline runs are written to
`<dir>/wandb/offline-run-*/` and uploaded later with `wandb sync <run dir>`.
"""

from __future__ import annotations

import netrc
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The fields of a config that are the same for every run of an experiment and
# describe it (the lists that plan the runs are replaced by the run's values).
RUN_FIELDS = (
    "name", "dataset", "model", "backend", "epochs", "batch_size", "optimizer",
    "lr_schedule",
    "update_freq", "drop_fraction", "drop_fraction_schedule", "sparse_init",
    "grow_candidates", "grad_accumulation_n", "keep_dense",
    "val_split", "max_train_samples", "max_test_samples", "export",
)


def resolve_mode(config_mode: str = "auto") -> str:
    """The W&B mode to use: WANDB_MODE, then the config, then key or no key."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if config_mode and config_mode != "auto":
        return config_mode
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """Whether W&B credentials are configured (WANDB_API_KEY or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    try:
        return netrc.netrc().authenticators(host.split("/")[0]) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def run_config(cfg: Mapping[str, Any], spec, schedule: tuple[int, int]) -> dict:
    """One run's own hyperparameters: its method, distribution, sparsity, seed and
    resolved schedule, plus the experiment fields every run shares."""
    return {
        **{k: cfg[k] for k in RUN_FIELDS if k in cfg},
        "method": spec.method, "distribution": spec.distribution,
        "sparsity": spec.sparsity, "seed": spec.seed, "block": spec.block_name,
        "begin_step": schedule[0], "end_step": schedule[1],
    }


def start(options: Mapping[str, Any], config: Mapping[str, Any], name: str,
          out_dir: str | Path, *, group: str | None = None, job_type: str | None = None):
    """Starts a W&B run, or returns None when W&B is disabled or not installed.

    Args:
        options: the config's `wandb` mapping (mode, project, entity, group, tags, dir).
        config: the run's hyperparameters (`run_config`).
        name: the run's name (its run id).
        out_dir: where the `wandb/` folder goes unless `options["dir"]` or
            WANDB_DIR says otherwise.
        group: the W&B group when `options["group"]` is not set (the experiment).
        job_type: the W&B job type (the method).
    """
    mode = resolve_mode(options.get("mode", "auto"))
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        warnings.warn(
            f"W&B mode is {mode!r} but wandb is not installed; runs are not "
            "logged to W&B. `pip install 'keras-dst[wandb]'` to log them.",
            stacklevel=2,
        )
        return None
    directory = options.get("dir") or os.environ.get("WANDB_DIR") or str(out_dir)
    Path(directory).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=options.get("project"),
        entity=options.get("entity"),
        group=options.get("group") or group,
        job_type=job_type,
        tags=list(options.get("tags") or []),
        name=name,
        config=dict(config),
        dir=directory,
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
    )


def metrics_logger(run, framework: str):
    """The `fit` callback that logs epoch metrics to `run`, or None without a run.

    Keras 3: W&B's `WandbMetricsLogger`. tf_keras (TF-MOT):
    `TfKerasMetricsLogger`, which logs the same keys.
    """
    if run is None:
        return None
    if framework == "keras":
        from wandb.integration.keras import WandbMetricsLogger

        return WandbMetricsLogger()
    import tf_keras

    class TfKerasMetricsLogger(tf_keras.callbacks.Callback):
        """`WandbMetricsLogger`'s epoch logging, as a tf_keras callback."""

        def on_train_begin(self, logs=None):
            define_epoch_metrics(run)

        def on_epoch_end(self, epoch, logs=None):
            row = {f"epoch/{k}": v for k, v in (logs or {}).items()}
            row["epoch/epoch"] = epoch
            lr = self.model.optimizer.learning_rate
            if not callable(lr):  # a schedule has no single value to log
                row["epoch/learning_rate"] = float(tf_keras.backend.get_value(lr))
            run.log(row)

    return TfKerasMetricsLogger()


def define_epoch_metrics(run) -> None:
    """Plots every `epoch/*` metric against `epoch/epoch`, as WandbMetricsLogger does."""
    run.define_metric("epoch/epoch")
    run.define_metric("epoch/*", step_metric="epoch/epoch")


def finish(run, row: Mapping[str, Any]) -> None:
    """Writes the results row into the run summary and closes the run."""
    if run is None:
        return
    run.summary.update({k: v for k, v in row.items() if v is not None})
    run.finish()
