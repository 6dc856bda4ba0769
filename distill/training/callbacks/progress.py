"""Training progress as "step k of max_steps": a bar on a terminal, plain periodic lines in a log file.

Lightning's own bars count batches of the current epoch ("Epoch 1/-2 30/10" after a resume of our
step-indexed data) and redraw with carriage returns that fill a redirected log. This one counts optimizer
steps against trainer.max_steps, starts at the resumed step, and when its stream is not a terminal prints a
line every `every_s` seconds (and at the first and last step) instead of redrawing. While the bar is up,
log records (Lightning's, the FID lines) are written above it instead of through it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

LOSS_KEY = "train/loss"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class StepProgress(ProgressBar):
    def __init__(self, stream=None, every_s: float = 15.0, terminal: bool | None = None):
        super().__init__()
        self.stream = stream
        self.every_s = float(every_s)
        self.terminal = terminal
        self._enabled = True
        self._bar = None
        self._redirect = contextlib.ExitStack()
        self._start = (0, 0.0)  # (step, time) when this fit began
        self._last_line = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def _is_terminal(self) -> bool:
        if self.terminal is not None:
            return self.terminal
        return bool(getattr(self._out, "isatty", lambda: False)())

    def print(self, *args, **kwargs) -> None:
        if self._bar is not None:
            self._bar.write(" ".join(map(str, args)), file=self._out)
        else:
            print(*args, file=self._out, flush=True, **kwargs)

    def _loss(self, trainer) -> float | None:
        value = trainer.progress_bar_metrics.get(LOSS_KEY)
        return None if value is None else float(value)

    def _line(self, trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step} of {total}"]
        loss = self._loss(trainer)
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        done = step - self._start[0]
        elapsed = time.perf_counter() - self._start[1]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.2f} steps/s")
            if total > step:
                parts.append(f"about {_duration((total - step) / rate)} left")
        return ", ".join(parts)

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        self._start = (trainer.global_step, time.perf_counter())
        if self._is_terminal():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="step", unit="step",
                             file=self._out, dynamic_ncols=True, smoothing=0.1)
            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger("lightning.pytorch"),
                                                                logging.getLogger()]))
        else:
            self._last_line = time.perf_counter()
            print(self._line(trainer), file=self._out, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled:
            return
        step = trainer.global_step
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            loss = self._loss(trainer)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        elif time.perf_counter() - self._last_line >= self.every_s or step >= trainer.max_steps:
            self._last_line = time.perf_counter()
            print(self._line(trainer), file=self._out, flush=True)

    def _close(self) -> None:
        self._redirect.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()
