"""Optional Weights & Biases logging, and a reader for offline run files.

`wandb` is imported only when a run is logged; without it everything else works.
The mode comes from WANDB_MODE, else from the config's `wandb.mode`, else
"online" when an API key is configured (WANDB_API_KEY or ~/.netrc) and
"offline" otherwise. Offline runs are written to
`<dir>/wandb/offline-run-*/run-*.wandb`; `offline_history` reads them back
without a W&B server.
"""

from __future__ import annotations

import json
import netrc
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_BLOCK = 32768  # the .wandb file is a LevelDB-style log of 32 KiB blocks
_HEADER = 7  # checksum (4), length (2), type (1)


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


def start(options: Mapping[str, Any], run_config: Mapping[str, Any], name: str,
          out_dir: str | Path):
    """Starts a W&B run, or returns None when W&B is disabled or not installed."""
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
        group=options.get("group"),
        tags=list(options.get("tags") or []),
        name=name,
        config=dict(run_config),
        dir=directory,
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
    )


def log_epoch(run, epoch: int, logs: Mapping[str, Any],
              densities: Mapping[str, float]) -> None:
    """Logs one epoch's metrics and per-layer densities (`density/<layer>`)."""
    if run is None:
        return
    row = {k: float(v) for k, v in logs.items() if _is_number(v)}
    row.update({f"density/{name}": float(d) for name, d in densities.items()})
    row["epoch"] = epoch
    run.log(row, step=epoch)


def finish(run, row: Mapping[str, Any]) -> None:
    """Writes the results row into the run summary and closes the run."""
    if run is None:
        return
    run.summary.update({k: v for k, v in row.items() if v is not None})
    run.finish()


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, str | bool)


# -- reading offline runs --------------------------------------------------------
def _chunks(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file.")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block tail padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
        else:
            return


def read_records(path: str | Path) -> Iterator[Any]:
    """Yields the protobuf `Record`s stored in a `run-*.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    for chunk in _chunks(Path(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        yield record


def offline_history(run_dir: str | Path) -> list[dict]:
    """The logged history rows of one offline run directory, oldest first."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            })
    return rows


def offline_summary(run_dir: str | Path) -> dict:
    """The final summary (results row included) of one offline run directory."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
