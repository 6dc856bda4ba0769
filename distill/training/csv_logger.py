"""`metrics.csv` that survives resume.

Lightning's CSVLogger deletes an existing metrics.csv when its folder is not empty (lightning 2.6,
fabric/loggers/csv_logs.py, `_check_log_dir_exists`), so a resumed run would lose its history. This
logger keeps the file: on a resume it drops only rows at or after the resumed step (a run killed after
its last checkpoint logged steps that are about to be trained again), then appends. Two step conventions
meet in the file: the training loop's rows (Lightning adds their `epoch`) carry the index of the batch being
trained, so step k is replayed by a resume at step k; rows a callback logs directly (fid_<k>step) carry
the number of steps done, so step k is part of the checkpoint at step k and is kept. When a new metric
name appears, the file is rewritten with the union of the columns (old rows get empty cells).
Rank 0 writes; other ranks log nothing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from distill.export import atomic_write_bytes


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _replayed(row: dict[str, str], resume_step: int) -> bool:
    """Whether a resume at `resume_step` logs this row again (see the module docstring)."""
    if row.get("step") in (None, ""):
        return False
    step = int(float(row["step"]))
    done = step + 1 if row.get("epoch") not in (None, "") else step
    return done > resume_step


def _write_all(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


class AppendingCSVLogger(Logger):
    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        super().__init__()
        self.path = Path(run_dir) / "metrics.csv"
        self._resume_step = resume_step
        self._pending: list[dict[str, Any]] = []
        self._columns: list[str] | None = None

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the resolved recipe is config.yaml beside this file

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = step
        self._pending.append(row)

    def _start(self) -> None:
        """First save: read the old file back, dropping rows the resumed run will log again."""
        columns, rows = _read(self.path)
        if self._resume_step is not None and rows:
            kept = [r for r in rows if not _replayed(r, self._resume_step)]
            if len(kept) != len(rows):
                _write_all(self.path, columns, kept)
        elif self._resume_step is None and rows:
            _write_all(self.path, columns, [])  # a fresh run in a directory that had a metrics.csv
        self._columns = columns

    @rank_zero_only
    def save(self) -> None:
        if not self._pending:
            return
        if self._columns is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._start()
        new = [k for row in self._pending for k in row if k not in self._columns]
        new = list(dict.fromkeys(new))
        if new or not self.path.is_file():
            _, rows = _read(self.path)
            self._columns = ["step"] + sorted(set(self._columns + new) - {"step"})
            _write_all(self.path, self._columns, rows + self._pending)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns, restval="", extrasaction="ignore").writerows(
                    self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
