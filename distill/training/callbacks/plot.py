"""training.png beside metrics.csv: the training loss and the FID at each step count against the step.

Redrawn after every FID evaluation (eval.every_n_steps) and at the end of fit, from metrics.csv alone, so the
picture of a resumed run shows its whole history. Rank 0 draws.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import lightning as L

LOSS_COLUMN = "train/loss"
FID_PREFIX = "fid_"


def read_series(csv_path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{column: (steps, values)} for every numeric column of metrics.csv; empty cells are skipped."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    if not csv_path.is_file():
        return series
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.pop("step", "")
            if step in ("", None):
                continue
            for key, value in row.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(v):
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(int(float(step)))
                    values.append(v)
    return series


def plot_training(csv_path: str | Path, png_path: str | Path) -> bool:
    """Draw the loss and FID panels that have data; False (and no file) when metrics.csv has neither."""
    from matplotlib.figure import Figure

    from distill.export import atomic_write_bytes

    series = read_series(Path(csv_path))
    fids = sorted(k for k in series if k.startswith(FID_PREFIX))
    panels = ([LOSS_COLUMN] if LOSS_COLUMN in series else []) + ([fids] if fids else [])
    if not panels:
        return False
    fig = Figure(figsize=(5.0 * len(panels), 3.6))  # no pyplot: no global state, no display backend
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in [panel] if isinstance(panel, str) else panel:
            steps, values = series[key]
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3,
                    label=key.replace(FID_PREFIX, "").replace("step", "-step"))
        ax.set_xlabel("step")
        ax.set_ylabel("loss" if isinstance(panel, str) else "FID")
        if all(v > 0 for key in ([panel] if isinstance(panel, str) else panel) for v in series[key][1]):
            ax.set_yscale("log")
        if not isinstance(panel, str):
            ax.legend(title="student")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(png_path), buf.getvalue())
    return True


class TrainingPlot(L.Callback):
    """After FIDCallback in the list, so that the FID of this step is in metrics.csv when it draws."""

    def __init__(self, run_dir: str | Path, every_n_steps: int = 0):
        self.run_dir = Path(run_dir)
        self.every = int(every_n_steps)

    def draw(self, trainer) -> None:
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:  # pending rows reach metrics.csv first
            logger.save()
        plot_training(self.run_dir / "metrics.csv", self.run_dir / "training.png")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0:
            self.draw(trainer)

    def on_train_end(self, trainer, pl_module):
        self.draw(trainer)
