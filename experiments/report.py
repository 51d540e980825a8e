"""Results files: runs.csv, summary.md (mean ± std over seeds) and PNG plots."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments import methods

CSV_FIRST = (
    "method", "distribution", "target_sparsity", "seed", "test_accuracy",
    "achieved_sparsity", "epoch_seconds", "test_loss", "val_accuracy", "itop",
    "dense_flops", "sparse_flops", "flops_ratio", "gzip_bytes", "dense_gzip_bytes",
    "gzip_ratio",
)


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

    Sweep variants (e.g. `update_freq=50`) are kept apart: they are appended
    to the distribution label.
    """
    groups = defaultdict(list)
    for row in rows:
        dist = row["distribution"] + (f" [{row['variant']}]" if row.get("variant") else "")
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
    sparsities = sorted({r["target_sparsity"] for r in rows if r["method"] != "dense"})
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# {title}", "",
             f"Test accuracy (%), mean ± std over seeds {seeds} "
             "(dense: the same baseline in every column).", ""]
    lines += ["| method | distribution | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
              "|---|---|" + "---:|" * len(sparsities)]
    methods = list(dict.fromkeys((m, d) for m, d, _ in groups))
    for m, d in methods:
        cells = []
        for s in sparsities:
            key = (m, d, 0.0) if m == "dense" else (m, d, s)
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
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(method, distribution):
    return method if method in ("dense", "tfmot") else f"{method} ({distribution})"


def plot_accuracy(rows: Sequence[Mapping], path: str | Path) -> None:
    """Test accuracy vs target sparsity, one line per method, ±1 std bars.

    Sparsities are evenly spaced on the x axis (0.9, 0.95, 0.98, 0.99 would
    crowd together on a linear one).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = group(rows)
    sparsities = sorted({k[2] for k in groups if k[0] != "dense"})
    position = {s: i for i, s in enumerate(sparsities)}
    for m, d in dict.fromkeys((m, d) for m, d, _ in groups):
        if m == "dense":
            mean, std = _stats([r["test_accuracy"] for r in groups[(m, d, 0.0)]])
            ax.axhline(100 * mean, color="black", linestyle="--", label="dense")
            ax.axhspan(100 * (mean - std), 100 * (mean + std), color="black", alpha=0.08)
            continue
        keys = sorted(k for k in groups if k[:2] == (m, d))
        stats = [_stats([r["test_accuracy"] for r in groups[k]]) for k in keys]
        ax.errorbar([position[k[2]] for k in keys], [100 * s[0] for s in stats],
                    yerr=[100 * s[1] for s in stats], marker="o", capsize=3,
                    label=_label(m, d))
    ax.set_xticks(range(len(sparsities)))
    ax.set_xticklabels([f"{s:g}" for s in sparsities])
    ax.set_xlabel("target sparsity")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(rows: Sequence[Mapping], histories: Mapping[str, Mapping],
                  path: str | Path, val_name: str = "validation") -> None:
    """Sparsity and accuracy per epoch, one row of panels per target sparsity.

    Accuracy is the validation accuracy when the runs had validation data
    (`val_name` says which: the held-out `val_split` or the test set), the
    training accuracy otherwise; the curves are means over seeds.
    """
    plt = _plt()
    groups = group(rows)
    sparsities = sorted({k[2] for k in groups if k[0] != "dense"}) or [0.0]
    fig, axes = plt.subplots(len(sparsities), 2, figsize=(11, 3.2 * len(sparsities)),
                             squeeze=False)
    for i, s in enumerate(sparsities):
        for (m, d, gs), rs in groups.items():
            if gs != s and m != "dense":
                continue
            hs = [histories[r["run_id"]] for r in rs if r["run_id"] in histories]
            if not hs:
                continue
            acc_key = "val_accuracy" if "val_accuracy" in hs[0] else "accuracy"
            for j, key in enumerate(("sparsity", acc_key)):
                curves = [h[key] for h in hs if key in h]
                if curves:
                    n = min(len(c) for c in curves)
                    mean = [statistics.fmean(c[e] for c in curves) for e in range(n)]
                    axes[i][j].plot(range(1, n + 1), mean, marker=".",
                                    label=_label(m, d),
                                    linestyle="--" if m == "dense" else "-")
            axes[i][1].set_ylabel(f"accuracy ({val_name})" if acc_key == "val_accuracy"
                                  else "training accuracy")
        axes[i][0].set_ylabel("sparsity")
        axes[i][0].set_title(f"target sparsity {s:g}", fontsize=9)
        for ax in axes[i]:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_density(densities: Mapping[float, Mapping[str, Mapping[str, float]]],
                       path: str | Path) -> None:
    """Per-layer density bars for each distribution, one panel per sparsity.

    Args:
        densities: {sparsity: {distribution: {layer: density}}}.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(densities), figsize=(5 * len(densities), 3.8),
                             squeeze=False)
    for ax, (s, by_dist) in zip(axes[0], sorted(densities.items())):
        layers = list(next(iter(by_dist.values())))
        width = 0.8 / len(by_dist)
        for j, (dist, dens) in enumerate(by_dist.items()):
            xs = [i + (j - (len(by_dist) - 1) / 2) * width for i in range(len(layers))]
            ax.bar(xs, [dens[name] for name in layers], width, label=dist)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("density (fraction of weights kept)")
        ax.set_title(f"overall sparsity {s:g}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_histories(histories: Mapping[str, Mapping], path: str | Path) -> None:
    Path(path).write_text(json.dumps(histories, indent=1))
