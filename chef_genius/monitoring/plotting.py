"""PNG plots of a run from its ``metrics.jsonl``: losses, learning rate, throughput and, with
``--eval-generate``, the recipe metrics of the generated recipes over steps.

A run's metrics file holds every session of the run, each opened by a ``start`` or ``resume``
record. ``history()`` turns it into the run's one true timeline: a resume from step S drops what
earlier sessions logged after S (a run resumed from an older checkpoint replays those steps), and
a ``start`` drops everything before it (the folder was reused for a fresh run). Resume points are
kept and drawn as dashed vertical lines.

Matplotlib draws with the Agg backend through ``Figure`` objects (no pyplot, no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chef_genius.evaluation.metrics import HIGHER_IS_BETTER, METRICS

PLOT_FILES = ("loss.png", "learning_rate.png", "throughput.png", "overview.png")
RECIPE_METRICS_FILE = "recipe_metrics.png"  # only for a run with ``generation`` records (--eval-generate)
SMOOTH_STEPS = 50


@dataclass
class History:
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    train: list[dict] = field(default_factory=list)  # one per logging step
    evals: list[dict] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)  # recipe metrics, per evaluation
    resumes: list[dict] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.step_losses or self.evals)


def history(records: list[dict]) -> History:
    """The run's timeline from all its metrics records, in file order (pure)."""
    h = History()
    for record in records:
        kind, step = record.get("type"), record.get("step")
        if not isinstance(step, int):
            continue
        if kind == "start":
            h = History()
        elif kind in ("resume", "rollback"):  # a rollback replaces the steps after its checkpoint too
            _cut(h, step)
            h.resumes.append(record)
        elif kind == "train":
            losses = record.get("step_losses") or [record.get("loss")]
            first = step - len(losses) + 1
            h.step_losses += [(first + i, float(v)) for i, v in enumerate(losses) if v is not None]
            h.train.append(record)
        elif kind == "eval" and record.get("eval_loss") is not None:
            h.evals.append(record)
        elif kind == "generation":
            h.generations.append(record)
    return h


def metric_series(h: History, name: str) -> list[tuple[int, float]]:
    """(step, value) of one recipe metric over the run's evaluations (pure)."""
    return [(r["step"], float(r[name])) for r in h.generations if isinstance(r.get(name), (int, float))]


def _cut(h: History, step: int) -> None:
    h.step_losses = [(s, v) for s, v in h.step_losses if s <= step]
    h.train = [r for r in h.train if r["step"] <= step]
    h.evals = [r for r in h.evals if r["step"] <= step]
    h.generations = [r for r in h.generations if r["step"] <= step]
    h.resumes = [r for r in h.resumes if r["step"] <= step]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (pure)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# ---------------------------------------------------------------------------------------------
# drawing


def _mark_resumes(ax, h: History, label: bool = True) -> None:
    for i, record in enumerate(h.resumes):
        ax.axvline(
            record["step"], color="0.45", linestyle="--", linewidth=1, label="resumed" if label and i == 0 else None
        )


def draw_loss(ax, h: History, smooth: int = SMOOTH_STEPS) -> None:
    if h.step_losses:
        steps, losses = zip(*h.step_losses)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="training loss (per step)")
        window = max(1, min(smooth, len(losses) // 10))
        ax.plot(
            steps,
            moving_average(list(losses), window),
            color="tab:blue",
            linewidth=1.8,
            label=f"training loss (mean of {window} steps)",
        )
    if h.evals:
        ax.plot(
            [r["step"] for r in h.evals],
            [r["eval_loss"] for r in h.evals],
            color="tab:orange",
            marker="o",
            markersize=4,
            linewidth=1.8,
            label="validation loss",
        )
        best = min(h.evals, key=lambda r: r["eval_loss"])
        ax.plot(
            [best["step"]],
            [best["eval_loss"]],
            marker="*",
            markersize=14,
            color="tab:red",
            linestyle="none",
            label=f"best {best['eval_loss']:.4f} at step {best['step']}",
        )
    _mark_resumes(ax, h)
    ax.set_ylabel("loss")
    ax.set_title("Loss")


def draw_learning_rate(ax, h: History) -> None:
    ax.plot(
        [r["step"] for r in h.train],
        [r["lr"] for r in h.train],
        color="tab:green",
        linewidth=1.8,
        label="learning rate",
    )
    _mark_resumes(ax, h)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate")


def draw_throughput(ax, h: History) -> None:
    ax.plot(
        [r["step"] for r in h.train],
        [r["tokens_per_s"] for r in h.train],
        color="tab:purple",
        linewidth=1.2,
        marker=".",
        markersize=3,
        label="target tokens / s",
    )
    _mark_resumes(ax, h)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("tokens / s")
    ax.set_title("Throughput")


def draw_recipe_metric(ax, h: History, name: str, higher_is_better: bool) -> None:
    series = metric_series(h, name)
    if series:
        steps, values = zip(*series)
        ax.plot(steps, values, color="tab:brown", marker="o", markersize=4, linewidth=1.6, label=name)
        best = (max if higher_is_better else min)(series, key=lambda point: point[1])
        ax.plot(
            [best[0]],
            [best[1]],
            marker="*",
            markersize=12,
            color="tab:red",
            linestyle="none",
            label=f"best {best[1]:.3g} at step {best[0]}",
        )
    _mark_resumes(ax, h, label=False)
    ax.set_title(f"{name} ({'higher' if higher_is_better else 'lower'} is better)", fontsize=9)


def _finish(ax, xlabel: bool = True) -> None:
    if xlabel:
        ax.set_xlabel("optimizer step")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.8)


def plot_run(h: History, out_dir: str | Path, title: str = "", smooth: int = SMOOTH_STEPS) -> list[Path]:
    """Write ``PLOT_FILES`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers = [
        lambda ax: draw_loss(ax, h, smooth),
        lambda ax: draw_learning_rate(ax, h),
        lambda ax: draw_throughput(ax, h),
    ]
    written = []
    for name, draw in zip(PLOT_FILES, drawers):
        fig = Figure(figsize=(10, 5), layout="constrained")
        ax = fig.add_subplot()
        draw(ax)
        _finish(ax)
        if title:
            fig.suptitle(title, fontsize=10)
        written.append(_save(fig, out_dir / name))
    fig = Figure(figsize=(10, 12), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for i, (ax, draw) in enumerate(zip(axes, drawers)):
        draw(ax)
        _finish(ax, xlabel=i == len(axes) - 1)
    fig.suptitle(title or "Training", fontsize=11)
    written.append(_save(fig, out_dir / PLOT_FILES[3]))
    if h.generations:
        written.append(plot_recipe_metrics(h, out_dir / RECIPE_METRICS_FILE, title))
    return written


def plot_recipe_metrics(h: History, path: Path, title: str = "") -> Path:
    """One panel per recipe metric of the ``generation`` records, over steps, the best point starred."""
    from matplotlib.figure import Figure

    rows = -(-len(METRICS) // 2)
    fig = Figure(figsize=(10, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, sharex=True).flatten()
    for ax in axes[len(METRICS) :]:
        ax.set_visible(False)
    for i, (ax, name) in enumerate(zip(axes, METRICS)):
        draw_recipe_metric(ax, h, name, HIGHER_IS_BETTER[name])
        _finish(ax, xlabel=i >= len(METRICS) - 2)
    recipes = h.generations[-1].get("recipes")
    fig.suptitle(
        f"{title + ': ' if title else ''}recipe metrics"
        f"{f' on {recipes} validation recipes' if recipes else ''} (greedy)",
        fontsize=11,
    )
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
