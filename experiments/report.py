"""Results files: per-run results, runs.csv, summary.md (mean ± std over seeds), plots.

Every run writes `DIR/results/<run id>.json` (its results row, per-epoch
history and config). `build(DIR)` merges them into runs.csv, histories.json,
summary.md, accuracy_vs_sparsity.png and training_curves.png; the runner calls
it after each invocation, and it can be run alone, e.g. after parallel W&B
sweep agents have written into one folder:

    python -m experiments.report runs/sweep_grid
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from experiments import methods

RESULTS = "results"
CSV_FIRST = (
    "method", "distribution", "block", "target_sparsity", "seed", "test_accuracy",
    "achieved_sparsity", "epoch_seconds", "test_loss", "val_accuracy", "itop",
    "dense_flops", "sparse_flops", "flops_ratio", "gzip_bytes", "dense_gzip_bytes",
    "gzip_ratio",
)


def result_path(out_dir: str | Path, run_id: str) -> Path:
    """Where the results of run `run_id` are written in `out_dir`."""
    return Path(out_dir) / RESULTS / f"{run_id}.json"


def write_result(out_dir: str | Path, run_id: str, row: Mapping, history: Mapping,
                 config: Mapping) -> None:
    """Writes one run's results file, atomically (a reader never sees half of it)."""
    path = result_path(out_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"row": row, "history": history, "config": config},
                              indent=1, default=str))
    os.replace(tmp, path)


def read_results(out_dir: str | Path) -> tuple[list[dict], dict[str, dict]]:
    """(rows, {run id: history}) of every results file in `out_dir`, by run id."""
    rows, histories = [], {}
    for path in sorted((Path(out_dir) / RESULTS).glob("*.json")):
        result = json.loads(path.read_text())
        rows.append(result["row"])
        histories[result["row"]["run_id"]] = result["history"]
    return rows, histories


def build(out_dir: str | Path, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Merges every results file in `out_dir` into runs.csv, histories.json,
    summary.md (also printed) and the accuracy and training plots.

    Returns:
        The merged rows.

    Raises:
        FileNotFoundError: when `out_dir` has no results files.
    """
    out = Path(out_dir)
    rows, histories = read_results(out)
    if not rows:
        raise FileNotFoundError(f"No results in {out / RESULTS}: run experiments.run "
                                f"with --out {out} first.")
    write_csv(rows, out / "runs.csv")
    write_histories(histories, out / "histories.json")
    first = rows[0]
    text = summary_markdown(rows, title=f"{first['name']}: {first['dataset']}, "
                                        f"{first['model']}")
    (out / "summary.md").write_text(text)
    print_fn("")
    print_fn(text)
    plot_accuracy(rows, out / "accuracy_vs_sparsity.png")
    plot_training(rows, histories, out / "training_curves.png",
                  "held-out val_split" if first.get("val_split") else "test set")
    return rows


def write_csv(rows: Sequence[Mapping], path: str | Path) -> None:
    """Writes all rows, the required columns first."""
    keys = list(CSV_FIRST)
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def read_csv(path: str | Path) -> list[dict]:
    """Reads runs.csv back, numbers as numbers."""
    def parse(v):
        if v == "":
            return None
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _key(row):
    return (methods.order(row["method"]), row["method"], row["distribution"],
            row["target_sparsity"])


def group(rows: Sequence[Mapping]) -> dict[tuple, list[Mapping]]:
    """Rows grouped by (method, distribution, target_sparsity), in display order.

    Block masks (`block`, e.g. "16x1") and sweep variants (e.g.
    `update_freq=50`) are kept apart: they are appended to the distribution
    label ("uniform [block 16x1]").
    """
    groups = defaultdict(list)
    for row in rows:
        dist = row["distribution"] + (f" [block {row['block']}]" if row.get("block") else "")
        dist += f" [{row['variant']}]" if row.get("variant") else ""
        groups[(row["method"], dist, row["target_sparsity"])].append(row)
    return dict(sorted(groups.items(), key=lambda kv: _key(kv[1][0])))


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values, scale=1.0, digits=2) -> str:
    mean, std = _stats(values)
    if mean is None:
        return "–"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def summary_markdown(rows: Sequence[Mapping], title: str = "Results") -> str:
    """Two tables: accuracy per method × sparsity, then all measures per group."""
    groups = group(rows)
    sparsities = sorted({r["target_sparsity"] for r in rows if methods.get(r["method"]).sparse})
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# {title}", "",
             f"Test accuracy (%), mean ± std over seeds {seeds} "
             "(dense: the same baseline in every column).", ""]
    lines += ["| method | distribution | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
              "|---|---|" + "---:|" * len(sparsities)]
    for m, d in dict.fromkeys((m, d) for m, d, _ in groups):
        cells = []
        for s in sparsities:
            key = (m, d, s) if methods.get(m).sparse else (m, d, 0.0)
            cells.append(_pm([r["test_accuracy"] for r in groups.get(key, [])], 100))
        lines.append(f"| {m} | {d} | " + " | ".join(cells) + " |")
    lines += ["", "All measures (mean ± std over seeds; FLOPs: sparse / dense inference "
              "FLOPs; size: gzip of the stripped `.keras` file / dense).", "",
              "| method | distribution | target | achieved sparsity | test acc (%) | "
              "test loss | s / epoch | FLOPs ratio | size ratio | ITOP | n |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (m, d, s), rs in groups.items():
        def col(k, rs=rs):
            return [r.get(k) for r in rs]

        itop = _stats(col("itop"))[0]
        lines.append(
            f"| {m} | {d} | {s:g} | {_pm(col('achieved_sparsity'), 1, 4)} | "
            f"{_pm(col('test_accuracy'), 100)} | {_pm(col('test_loss'), 1, 3)} | "
            f"{_pm(col('epoch_seconds'), 1, 3)} | {_stats(col('flops_ratio'))[0]:.3f} | "
            f"{_stats(col('gzip_ratio'))[0]:.3f} | "
            f"{'–' if itop is None else f'{itop:.3f}'} | {len(rs)} |"
        )
    if any(r.get("tflite_bytes") is not None for r in rows):
        lines += tflite_markdown(groups)
    return "\n".join(lines) + "\n"


def tflite_markdown(groups: Mapping[tuple, Sequence[Mapping]]) -> list[str]:
    """The TFLite table (`export:`): size, latency per batch size, accuracy."""
    batches = sorted({int(k[len("tflite_b"):-len("_us")]) for rs in groups.values()
                      for r in rs for k in r if k.startswith("tflite_b") and k.endswith("_us")
                      and r[k] is not None})
    quantize = sorted({r["tflite_quantize"] for rs in groups.values() for r in rs
                       if r.get("tflite_quantize")})
    lines = ["", f"TFLite export ({', '.join(quantize)}; `dst.export`, TF-MOT: TensorFlow's "
             "converter with the same options), mean ± std over seeds: file size, median "
             "latency per call (one interpreter thread), test accuracy of the file.", "",
             "| method | distribution | target | KB | gzip KB | "
             + " | ".join(f"batch {b} µs" for b in batches) + " | TFLite acc (%) | delegate |",
             "|---|---|---:|---:|---:|" + "---:|" * len(batches) + "---:|---|"]
    for (m, d, s), rs in groups.items():
        rs = [r for r in rs if r.get("tflite_bytes") is not None]
        if not rs:
            continue
        cells = [_pm([r.get(f"tflite_b{b}_us") for r in rs], 1, 0) for b in batches]
        delegates = ", ".join(sorted({str(r.get("tflite_delegate")) for r in rs}))
        lines.append(
            f"| {m} | {d} | {s:g} | {_pm([r['tflite_bytes'] for r in rs], 1e-3, 1)} | "
            f"{_pm([r['tflite_gzip_bytes'] for r in rs], 1e-3, 1)} | " + " | ".join(cells)
            + f" | {_pm([r['tflite_accuracy'] for r in rs], 100)} | {delegates} |")
    return lines


# -- plots -----------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(method: str, distribution: str) -> dict:
    """Colour, marker, line style and label of a (method, distribution) line."""
    m = methods.get(method)
    style = dict(color=m.color, marker=m.marker, label=m.display(distribution),
                 linestyle=methods.DISTRIBUTION_STYLES.get(distribution.split(" [")[0], "-"))
    if "[block " in distribution:  # block masks: hollow markers
        style["markerfacecolor"] = "none"
    return style


def _legend_right(fig, ax, **kwargs) -> None:
    """One legend outside the data, right of the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=8, frameon=False, **kwargs)


def plot_accuracy(rows: Sequence[Mapping], path: str | Path) -> None:
    """Test accuracy vs target sparsity, one line per method and distribution, ±1 std.

    Each method has its colour and marker (experiments/methods.py); the line
    style tells its distributions apart (solid ERK, dashed uniform, dotted ER);
    lines are shifted slightly sideways so that equal values stay visible.
    The dense baseline is a black dashed line with a ±1 std band. Sparsities
    are evenly spaced on the x axis (0.9, 0.95, 0.98, 0.99 would crowd together
    on a linear one).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = group(rows)
    sparsities = sorted({k[2] for k in groups if methods.get(k[0]).sparse})
    position = {s: i for i, s in enumerate(sparsities)}
    lines = list(dict.fromkeys((m, d) for m, d, _ in groups if methods.get(m).sparse))
    # Each line is shifted a little sideways so that equal values stay visible.
    dodge = {line: (j - (len(lines) - 1) / 2) * 0.15 / max(len(lines), 1)
             for j, line in enumerate(lines)}
    for m, d in dict.fromkeys((m, d) for m, d, _ in groups):
        if not methods.get(m).sparse:
            mean, std = _stats([r["test_accuracy"] for r in groups[(m, d, 0.0)]])
            style = methods.get(m)
            ax.axhline(100 * mean, color=style.color, linestyle="--", label=style.label)
            ax.axhspan(100 * (mean - std), 100 * (mean + std), color=style.color, alpha=0.08)
            continue
        keys = sorted(k for k in groups if k[:2] == (m, d))
        stats = [_stats([r["test_accuracy"] for r in groups[k]]) for k in keys]
        ax.errorbar([position[k[2]] + dodge[(m, d)] for k in keys], [100 * s[0] for s in stats],
                    yerr=[100 * s[1] for s in stats], capsize=3, markersize=6,
                    **_style(m, d))
    ax.set_xticks(range(len(sparsities)))
    ax.set_xticklabels([f"{s:g}" for s in sparsities])
    ax.set_xlabel("target sparsity")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend_right(fig, ax)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# Sparsity schedules (`sparsity_schedule` in the method table): label and colour.
SCHEDULES = {"dense": ("dense", "black"), "constant": ("sparse from the start", "tab:purple"),
             "gradual": ("gradual pruning", "tab:green")}


def plot_training(rows: Sequence[Mapping], histories: Mapping[str, Mapping],
                  path: str | Path, val_name: str = "validation") -> None:
    """Sparsity and accuracy per epoch, one row of panels per target sparsity.

    Left: one line per sparsity schedule (dense, sparse from the start,
    gradual pruning; `sparsity_schedule` in the method table), the mean over
    its runs, with the range of its runs shaded, and the methods that follow
    it in the label. Right: one line per method and distribution, in the
    method's colour and marker, mean over seeds. Accuracy is the validation
    accuracy when the runs had validation data (`val_name` says which: the
    held-out `val_split` or the test set), the training accuracy otherwise.
    One legend per panel kind, outside the data.
    """
    plt = _plt()
    groups = group(rows)
    sparsities = sorted({k[2] for k in groups if methods.get(k[0]).sparse}) or [0.0]
    fig, axes = plt.subplots(len(sparsities), 2, figsize=(10, 2.8 * len(sparsities)),
                             squeeze=False)
    acc_label = "training accuracy"
    for i, s in enumerate(sparsities):
        by_schedule = defaultdict(lambda: ([], []))  # schedule -> (curves, labels)
        for (m, d, gs), rs in groups.items():
            method = methods.get(m)
            if gs != s and method.sparse:
                continue
            hs = [histories[r["run_id"]] for r in rs if r["run_id"] in histories]
            if not hs:
                continue
            curves, labels = by_schedule[method.sparsity_schedule]
            curves += [h["sparsity"] for h in hs if "sparsity" in h]
            labels.append(method.label)
            acc_key = "val_accuracy" if "val_accuracy" in hs[0] else "accuracy"
            acc = [h[acc_key] for h in hs if acc_key in h]
            if acc:
                n = min(len(c) for c in acc)
                mean = [statistics.fmean(c[e] for c in acc) for e in range(n)]
                axes[i][1].plot(range(1, n + 1), mean, markersize=5, **_style(m, d))
                if acc_key == "val_accuracy":
                    acc_label = f"accuracy ({val_name})"
        for schedule, (curves, labels) in by_schedule.items():
            if not curves:
                continue
            n = min(len(c) for c in curves)
            epochs = range(1, n + 1)
            values = [[c[e] for c in curves] for e in range(n)]
            name, color = SCHEDULES[schedule]
            axes[i][0].plot(epochs, [statistics.fmean(v) for v in values], marker=".",
                            color=color,
                            label=f"{name}: {', '.join(dict.fromkeys(labels))}")
            axes[i][0].fill_between(epochs, [min(v) for v in values],
                                    [max(v) for v in values], color=color, alpha=0.2)
        axes[i][0].set_ylabel("sparsity")
        axes[i][1].set_ylabel(acc_label)
        for ax in axes[i]:
            ax.set_title(f"target sparsity {s:g}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7,
               frameon=False, title="sparsity schedule (left)", title_fontsize=8)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False, title="method (right)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_layer_density(densities: Mapping[float, Mapping[str, Mapping[str, float]]],
                       path: str | Path) -> None:
    """Per-layer density bars for each distribution, one panel per sparsity.

    Args:
        densities: {sparsity: {distribution: {layer: density}}}.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(densities), figsize=(4.5 * len(densities), 3.6),
                             squeeze=False)
    for ax, (s, by_dist) in zip(axes[0], sorted(densities.items())):
        layers = list(next(iter(by_dist.values())))
        width = 0.8 / len(by_dist)
        for j, (dist, dens) in enumerate(by_dist.items()):
            xs = [i + (j - (len(by_dist) - 1) / 2) * width for i in range(len(layers))]
            ax.bar(xs, [dens[name] for name in layers], width, label=dist,
                   color=f"C{j}")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("density (fraction of weights kept)")
        ax.set_title(f"overall sparsity {s:g}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _legend_right(fig, axes[0][0], title="distribution")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_histories(histories: Mapping[str, Mapping], path: str | Path) -> None:
    Path(path).write_text(json.dumps(histories, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Merge DIR/results/*.json into runs.csv, histories.json, summary.md "
                    "and plots (e.g. after parallel W&B sweep agents).")
    p.add_argument("out", help="the --out folder of the runs")
    args = p.parse_args(argv)
    try:
        build(args.out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
