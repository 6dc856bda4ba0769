"""EDM's exponential moving average of a diffusion model's weights (NVlabs EDM, training/training_loop.py).

The half-life is counted in training images, not steps, so it means the same at any batch size:
after each optimizer step that saw `batch` images, avg <- beta avg + (1 - beta) theta with
beta = 0.5 ** (batch / ema_nimg). While few images have been seen, ema_nimg is capped at
rampup_ratio x images seen (EDM: 0.05), so the average of a short run forgets the random initialisation
as fast as the run moves away from it. Several half-lives may be kept side by side (the first is exported).
"""

from __future__ import annotations

import lightning as L
import torch


def ema_beta(images_seen: int, batch: int, halflife_images: float, rampup_ratio: float | None) -> float:
    """The average's decay for a step of `batch` images that brought the total to `images_seen`."""
    ema_nimg = halflife_images
    if rampup_ratio is not None:
        ema_nimg = min(ema_nimg, images_seen * rampup_ratio)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


class HalfLifeEMA(L.Callback):
    def __init__(self, halflife_kimg, rampup_ratio: float | None, batch_size: int):
        self.halflives = [float(h) for h in halflife_kimg]
        self.rampup_ratio = rampup_ratio
        self.batch_size = int(batch_size)  # per rank and micro-batch; the global batch is counted at fit time
        self.averages: dict[str, dict[str, torch.Tensor]] = {}
        self._lists = None

    @property
    def state_key(self) -> str:
        return "HalfLifeEMA"

    @staticmethod
    def key(halflife_kimg: float) -> str:
        return f"halflife_{halflife_kimg:g}kimg"

    def on_fit_start(self, trainer, pl_module):
        self._lists = None
        state = pl_module.net.state_dict()
        for h in self.halflives:
            key = self.key(h)
            if key in self.averages:
                self.averages[key] = {k: v.to(pl_module.device) for k, v in self.averages[key].items()}
            else:
                self.averages[key] = {k: v.detach().clone() for k, v in state.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
        if (batch_idx + 1) % accumulate:
            return  # once per optimizer step
        if self._lists is None:  # the live state dict aliases the parameters, which change in place
            live = pl_module.net.state_dict()
            names = [k for k, v in live.items() if v.is_floating_point()]
            self._lists = ([live[k] for k in names], [[self.averages[self.key(h)][k] for k in names]
                                                      for h in self.halflives])
        batch = self.batch_size * accumulate * trainer.world_size
        seen = trainer.global_step * batch  # global_step already counts this step (EDM adds, then averages)
        src, averages = self._lists
        for h, avg in zip(self.halflives, averages):
            torch._foreach_lerp_(avg, src, 1.0 - ema_beta(seen, batch, h * 1000, self.rampup_ratio))

    def state_dict(self):
        return {"averages": self.averages, "halflife_kimg": self.halflives}

    def load_state_dict(self, state_dict):
        self.averages = dict(state_dict.get("averages", {}))
        self._lists = None

    def weights(self, halflife_kimg: float | None = None) -> dict[str, torch.Tensor]:
        return self.averages[self.key(self.halflives[0] if halflife_kimg is None else halflife_kimg)]
