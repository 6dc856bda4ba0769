"""Training a diffusion model the EDM way (Karras et al. 2022, sec. 5 and Table 1), as a LightningModule.

The network F is trained inside EDM's preconditioning D(x, s) = c_skip x + c_out F(c_in x, ln(s)/4)
(`teachers.base.BackboneFeeding`, the feeding an `edm` teacher and a student copied from it use), with
EDM's loss: ln(s) ~ N(P_mean, P_std^2), lambda(s) = (s^2 + sd^2) / (s sd)^2, l2 against the clean image.
Randomness comes from a generator seeded by (run.seed, global_step, micro-batch), drawn for the global batch
and sliced by rank, as in `distill.training.module`, so a resumed run continues exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import lightning as L
import torch

from distill.data.step_batches import mix_seed
from distill.training.module import dropout_masks, dropout_rates
from teachers.base import BackboneFeeding, expand_like


@dataclass
class ImageSpec:
    """What the data module and the network builder ask of a teacher, before there is one."""
    image_shape: tuple[int, ...]
    num_classes: int
    sigma_data: float
    sigma_min: float
    sigma_max: float

    @classmethod
    def from_config(cls, cfg) -> ImageSpec:
        m = cfg.model
        return cls(tuple(int(s) for s in m.image_shape), int(m.num_classes), float(m.sigma_data),
                   float(m.sigma_min), float(m.sigma_max))


def lognormal_sigmas(n: int, p_mean: float, p_std: float, generator: torch.Generator, device=None,
                     dtype=torch.float32) -> torch.Tensor:
    """EDM's training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (Table 1, "Training")."""
    return (torch.randn(n, generator=generator, device=device, dtype=dtype) * p_std + p_mean).exp()


def edm_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Per-sample lambda(sigma) ||D - x0||^2 / dim, lambda = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2
    (EDM eq. 8 and Table 1), so every noise level starts with a unit-scale loss. NVlabs sums over pixels;
    the mean over pixels differs by the constant dim, which Adam does not see (only its eps)."""
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return weight * (denoised - x0).flatten(1).pow(2).mean(1)


class EDMTeacherTraining(L.LightningModule):
    def __init__(self, cfg):
        super().__init__()
        from omegaconf import OmegaConf

        from distill.training.student import network_spec_for
        from teachers.networks import build_network

        self.cfg = cfg
        self.spec = ImageSpec.from_config(cfg)
        network = OmegaConf.to_container(cfg.model.network) if not isinstance(cfg.model.network, dict) \
            else dict(cfg.model.network)
        self.net = build_network(**network_spec_for(network, self.spec))
        self.feeding = BackboneFeeding(self.spec.sigma_data)
        self.has_dropout = any(r > 0 for r in dropout_rates(self.net))

    def step_generator(self, micro: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(mix_seed(self.cfg.run.seed, self.global_step, micro))

    def rank_part(self, draw, batch: int):
        """draw(global_batch) -> this rank's `batch` rows (R ranks draw what one process with R x B draws)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return draw(batch * world)[self.global_rank * batch:(self.global_rank + 1) * batch]

    def training_step(self, batch, batch_idx):
        x0, labels = batch
        cond = labels if self.spec.num_classes else None
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        micro = batch_idx % accumulate
        gen, b, loss_cfg = self.step_generator(micro), x0.shape[0], self.cfg.loss
        sigma = self.rank_part(lambda n: lognormal_sigmas(n, loss_cfg.p_mean, loss_cfg.p_std, gen, self.device,
                                                          x0.dtype), b)
        noise = self.rank_part(lambda n: torch.randn((n, *x0.shape[1:]), generator=gen, device=self.device,
                                                     dtype=x0.dtype), b)
        masks = dropout_masks(mix_seed(self.cfg.run.seed, self.global_step, micro, 0xD80, self.global_rank),
                              self.device) if self.has_dropout else nullcontext()
        with masks:
            denoised = self.feeding.denoise(self.net, x0 + expand_like(sigma, x0) * noise, sigma, cond)
        loss = edm_loss(denoised, x0, sigma, self.spec.sigma_data).mean()
        if self._trainer is not None and self.trainer._logger_connector.should_update_logs:
            self.log("train/loss", loss, prog_bar=self.trainer.progress_bar_callback is not None)
        return loss

    def configure_optimizers(self):
        # EDM ramps the learning rate up linearly (lr_rampup_kimg) and keeps it constant after.
        o, t = self.cfg.optim, self.cfg.trainer
        cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}[o.name]
        fused = o.name in ("adam", "adamw") and not (t.gradient_clip_val and "16" in str(t.precision))
        opt = cls(self.net.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                  **({"fused": True} if fused else {"foreach": True}))
        if o.warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / o.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
