"""The comparison as a PNG: losses vs step and vs wall-clock, the KD weight, KD phases."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

from megatron_salt.report.compare import Comparison
from megatron_salt.report.files import save_figure
from megatron_salt.report.run import Point, Run


def _time_unit(max_seconds: float) -> tuple[float, str]:
    if max_seconds >= 2 * 3600:
        return 3600.0, "h"
    if max_seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _focus_ylim(ax, series: Sequence[Sequence[Point]], last_iteration: int) -> None:
    """Zoom the y-axis past the first 10% of training, where the curves are comparable."""
    values = [p.value for s in series for p in s if not math.isnan(p.value)]
    late = [
        p.value
        for s in series
        for p in s
        if not math.isnan(p.value) and p.iteration >= 0.1 * last_iteration
    ]
    if not values:
        return
    low, high = min(values), max(late or values)
    pad = 0.06 * (high - low) or 0.1
    ax.set_ylim(low - pad, high + pad)


def plot_comparison(
    rows: Sequence[Comparison], baseline: Run, path: str | Path, *, title: str
) -> None:
    """Validation and train loss vs step (left) and vs training wall-clock (right), the KD
    weight below them; KD phases shaded; the baseline's final validation loss as a line and
    where each run first reaches it marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = [r.run for r in rows]
    any_kd = any(r.kd_weight and r.mode == "salt" for r in runs)
    fig, axes = plt.subplots(
        3 if any_kd else 2,
        2,
        figsize=(14, 11 if any_kd else 9),
        sharex="col",
        gridspec_kw={"height_ratios": [3, 3, 1.2] if any_kd else [3, 3]},
        squeeze=False,
    )
    max_time = max((r.time_at(r.last_iteration) or 0.0) for r in runs)
    scale, unit = _time_unit(max_time)
    salt_colours = itertools.cycle(plt.get_cmap("tab10").colors)
    colours = {id(r): ("black" if r is baseline else next(salt_colours)) for r in runs}
    target = baseline.final_val.value
    last_iteration = max(r.last_iteration for r in runs)

    def xs(points: Sequence[Point], run: Run, col: int) -> list[float]:
        """x positions: steps (left column) or training wall-clock (right column)."""
        if col == 0:
            return [p.iteration for p in points]
        return [
            (p.train_time_s if p.train_time_s is not None else run.time_at(p.iteration) or 0.0)
            / scale
            for p in points
        ]

    for row in rows:
        run, colour = row.run, colours[id(row.run)]
        style = {"color": colour, "lw": 2.2 if row.is_baseline else 1.6}
        label = run.name + (" (baseline)" if row.is_baseline else "")
        for col in range(2):
            ax_val, ax_train = axes[0][col], axes[1][col]
            ax_val.plot(
                xs(run.val_loss, run, col),
                [p.value for p in run.val_loss],
                marker="o",
                ms=3,
                label=label,
                **style,
            )
            ax_train.plot(
                xs(run.train_loss, run, col), [p.value for p in run.train_loss], alpha=0.85, **style
            )
            kd_end = run.kd_phase_end
            if kd_end:
                span = (0.0, kd_end) if col == 0 else (0.0, (run.time_at(kd_end) or 0) / scale)
                for ax in axes[:, col]:
                    ax.axvspan(*span, color=colour, alpha=0.08, lw=0)
                    ax.axvline(span[1], color=colour, ls=":", lw=1)
            if any_kd and run.mode == "salt" and run.kd_weight:
                # A logged weight is the mean over the log interval that ends at its step.
                weights = [Point(0, run.kd_weight[0].value, 0.0), *run.kd_weight]
                axes[2][col].step(
                    xs(weights, run, col), [p.value for p in weights], where="pre", **style
                )
            if row.reach is not None and not row.is_baseline:
                x = row.reach.iteration if col == 0 else xs([row.reach], run, col)[0]
                fraction = row.step_fraction if col == 0 else row.time_fraction
                ax_val.plot(
                    [x],
                    [row.reach.value],
                    marker="*",
                    ms=16,
                    color=colour,
                    markeredgecolor="black",
                    zorder=5,
                )
                if fraction is not None:
                    ax_val.annotate(
                        f"{100 * fraction:.0f}%",
                        (x, row.reach.value),
                        textcoords="offset points",
                        xytext=(0, 12),
                        ha="center",
                        color=colour,
                        fontweight="bold",
                        bbox={
                            "boxstyle": "round,pad=0.15",
                            "fc": "white",
                            "ec": "none",
                            "alpha": 0.8,
                        },
                    )

    for col in range(2):
        axes[0][col].axhline(target, color="black", ls="--", lw=1)
        _focus_ylim(axes[0][col], [r.val_loss for r in runs], last_iteration)
        _focus_ylim(axes[1][col], [r.train_loss for r in runs], last_iteration)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        xlabel = "step" if col == 0 else f"training wall-clock ({unit})"
        axes[-1][col].set_xlabel(xlabel)
        axes[0][col].set_title(f"validation loss vs {'step' if col == 0 else 'wall-clock'}")
        axes[1][col].set_title(f"train LM loss vs {'step' if col == 0 else 'wall-clock'}")
        if any_kd:
            axes[2][col].set_title("KD weight w (as logged)")
            axes[2][col].set_ylim(bottom=0)
    axes[0][0].set_ylabel("validation LM loss")
    axes[1][0].set_ylabel("train LM loss")
    if any_kd:
        axes[2][0].set_ylabel("w")

    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [
        plt.Line2D([], [], color="black", ls="--", lw=1),
        plt.Line2D([], [], marker="*", ms=14, color="grey", markeredgecolor="black", ls=""),
        Patch(color="grey", alpha=0.25),
    ]
    labels += [
        f"baseline final val loss ({target:.4f})",
        "first eval at/below it (% of baseline)",
        "KD phase (run's colour)",
    ]
    ncol = min(4, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    legend_rows = -(-len(labels) // ncol)
    who = baseline.name if "baseline" in baseline.name else f"baseline {baseline.name}"
    fig.suptitle(
        f"{title}\n{who}: final validation loss {target:.4f} "
        f"at step {baseline.final_val.iteration}",
        fontsize=13,
    )
    # Leave the legend its rows below the axes (many runs: several rows).
    fig.tight_layout(rect=(0, 0.02 + 0.022 * legend_rows, 1, 1))
    save_figure(fig, path)
    plt.close(fig)
