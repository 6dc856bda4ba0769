"""Exponential moving averages of the student's network for evaluation (one or more rates).

Only the student's network is averaged: Lightning's own weight averaging deep-copies the whole
module, teacher included (FACTS.md). The update is one fused `_foreach_lerp_` per rate.
"""

from __future__ import annotations

import lightning as L
import torch


class StudentEMA(L.Callback):
    def __init__(self, rates):
        self.rates = [float(r) for r in rates]
        self.averages: dict[str, dict[str, torch.Tensor]] = {}
        self._lists = None  # (live tensors, [(weight, averaged tensors)]), built at the first update

    @property
    def state_key(self) -> str:
        return "StudentEMA"

    def _float_items(self, state):
        return [(k, v) for k, v in state.items() if v.is_floating_point()]

    def on_fit_start(self, trainer, pl_module):
        self._lists = None
        net_state = pl_module.student.net.state_dict()
        for rate in self.rates:
            key = str(rate)
            if key not in self.averages:
                self.averages[key] = {k: v.detach().clone() for k, v in net_state.items()}
            else:
                self.averages[key] = {k: v.to(pl_module.device) for k, v in self.averages[key].items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % getattr(trainer, "accumulate_grad_batches", 1):
            return  # the weights change once per optimizer step, so they are averaged once per step
        if self._lists is None:
            # The live state dict aliases the parameters, which the optimizer updates in place: build the
            # tensor lists once, not a state_dict() walk over every module each step (docs/benchmarks.md).
            live = pl_module.student.net.state_dict()
            names = [k for k, v in live.items() if v.is_floating_point()]
            self._lists = ([live[k] for k in names],
                           [(1.0 - rate, [self.averages[str(rate)][k] for k in names]) for rate in self.rates])
        src, averages = self._lists
        for weight, avg in averages:
            torch._foreach_lerp_(avg, src, weight)

    def state_dict(self):
        return {"averages": self.averages, "rates": self.rates}

    def load_state_dict(self, state_dict):
        self.averages = dict(state_dict.get("averages", {}))
        self._lists = None

    def weights(self, rate: float | None = None) -> dict[str, torch.Tensor]:
        """The averaged state dict for `rate` (the first rate by default)."""
        return self.averages[str(self.rates[0] if rate is None else float(rate))]
