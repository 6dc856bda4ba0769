"""Curricula: how the discretisation and the target rate change with the training step k.

Every quantity here is a pure function of the global step k, so a resumed run continues exactly where the
uninterrupted one would be (Lightning restores the step, not any scheduler object).

- CT (Song et al. 2023, Consistency Models, appendix C):
      N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1,   mu(k) = exp(s0 ln(mu0) / N(k)).
  N(k) is a function of k/K, mu(k) is not: the target lags ~1/(1 - mu) steps whatever K is. The paper's pair was
  set for K = 800k; in a short run N(k) outruns the lagging target and CT collapses to a constant output
  (docs/benchmarks.md, "cosine lr"). `ct_mu`'s `stretch` = 800k / K scales ln(mu), so the lag is the same share
  of the run as in the paper's (method.mu_ref_steps; the paper's formula exactly at K = 800k or with null).
- iCT (Song & Dhariwal 2023, Improved Techniques for Training Consistency Models, sec. 3.4, eq. 8):
      N(k) = min(s0 2^floor(k/K'), s1) + 1,   K' = floor(K / (log2 floor(s1/s0) + 1)).
- ECT (Geng et al. 2024, Consistency Models Made Easy, sec. 3.2-3.3, "mapping function"): continuous
  t ~ lognormal and r = t (1 - q^-(a+1) n(t)), n(t) = 1 + kappa sigmoid(-b t), stage a = floor(k / d),
  clamped to r >= sigma_min. Implemented as in the authors' code (locuslab/ect, `ECMLoss.t_to_r_sigmoid`):
  the gap t - r halves every d iterations (q = 2); their CIFAR-10 run uses d = 25k of 200k iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from distill.math.schedules import cd_grid, index_probabilities, sample_indices

# Defaults (s0, s1) of each paper's N(k): CT on CIFAR-10 (CM paper, Table 3) and iCT (sec. 3.4).
CT_DEFAULTS = (2, 150)
ICT_DEFAULTS = (10, 1280)


def ct_N(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    """CM paper, appendix C: N(k) grows like sqrt(k) from s0 (k = 0) to s1 + 1 levels (k = K = `total`)."""
    frac = min(k, total) / total
    return math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ct_mu(n_levels: int, s0: int = 2, mu0: float = 0.9, stretch: float = 1.0) -> float:
    """CM paper, appendix C: mu(k) = exp(s0 ln(mu0) / N(k)); mu = mu0 at k = 0, where N = s0.

    `stretch` multiplies ln(mu): with stretch = K_ref / K the lag 1/(1 - mu) ~ -1/ln(mu) is the same share of a
    K-step run as of the K_ref-step run the rate was set for (module doc); 1 is the paper's formula.
    OpenAI's code (consistency_models, `create_ema_and_scales_fn`) divides by N(k) - 1 instead (it applies
    the +1 after computing the rate); we follow the paper's formula.
    """
    return math.exp(stretch * s0 * math.log(mu0) / n_levels)


def ict_N(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT eq. 8: N doubles every K' steps, from s0 + 1 to s1 + 1 levels."""
    k_prime = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / max(k_prime, 1)), s1) + 1


def ect_stage(k: int, stage_steps: int) -> int:
    """ECT: the number of times the gap has been shrunk by q at step k."""
    return k // max(stage_steps, 1)


def ect_r(t: torch.Tensor, stage: int, q: float = 2.0, kappa: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """ECT's mapping r(t) = t (1 - q^-(stage+1) (1 + kappa sigmoid(-b t))), clamped at 0.

    The sigmoid makes the relative gap larger at small t, where consistency is easy to learn.
    """
    decay = q ** -(stage + 1)
    return (t * (1 - decay * (1 + kappa * torch.sigmoid(-b * t)))).clamp_min(0)


def truncated_lognormal(batch: int, lo: float, hi: float, p_mean: float, p_std: float,
                        generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """ln t ~ N(p_mean, p_std^2) restricted to [lo, hi] by inverse-CDF sampling, float64 (B,)."""
    cdf = lambda v: 0.5 * (1 + math.erf((math.log(v) - p_mean) / (p_std * math.sqrt(2))))
    a, c = cdf(lo), cdf(hi)
    u = a + (c - a) * torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
    return (p_mean + p_std * math.sqrt(2) * torch.erfinv(2 * u - 1)).exp().clamp(lo, hi)


# -- pair samplers: (sigma_cur, sigma_next) = (t_n, t_{n+1}) for each sample at step k ---------------------
def karras_at(position: torch.Tensor, n_levels: int, sigma_min: float, sigma_max: float,
              rho: float = 7.0) -> torch.Tensor:
    """The Karras curve at a real position in [0, N-1] of an increasing N-level grid (EDM eq. 5, read from
    sigma_min up): integer positions are exactly `cd_grid(N)`'s levels, others lie between them."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + position / (n_levels - 1) * (hi - lo)) ** rho


def karras_position(sigma: torch.Tensor, n_levels: int, sigma_min: float, sigma_max: float,
                    rho: float = 7.0) -> torch.Tensor:
    """The inverse of `karras_at`: where sigma sits on the N-level curve, a real in [0, N-1]."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (sigma ** (1 / rho) - lo) / (hi - lo) * (n_levels - 1)


@dataclass
class GridPairs:
    """Pairs of noise levels `skip` Karras intervals apart, on a curve whose size N(k) follows a curriculum.

    `continuous=False` (method.pairs: grid) keeps the papers' discrete levels: n is drawn from the N-level
    grid and the pair is (t_n, t_{n+skip}). `continuous=True` (method.pairs: continuous) draws the lower
    end's position anywhere along the same curve, so N sets the gap between the two levels (and the size of
    the ODE step of a CD target) but not the set of levels the student is trained at: a student trained on a
    grid fails in between its levels (docs/benchmarks.md, "Continuous pairs"), one trained on positions drawn
    continuously does not. Uniform sampling draws the position uniformly; lognormal (iCT) draws a sigma from
    the lognormal and puts it inside the pair at a uniform offset, the continuous form of iCT's interval
    masses (whose discrete form picks the interval holding that sigma). With skip > 1 the pair is one solver
    step across `skip` intervals (the skipping-step target of Latent Consistency Models, Luo et al. 2023,
    sec. 4.3).

    A discrete-time teacher (`round_sigma`, e.g. DDPM) is evaluated only at its own timesteps, where it is
    exact: both levels snap to its table (continuous pairs still cover all of its ~1000 levels). A pair narrower
    than the table's spacing may snap onto one level; it then trains nothing (the target is the student's own
    output at the same point) rather than anything wrong.
    """
    levels: callable
    sigma_min: float
    sigma_max: float
    rho: float = 7.0
    index_sampling: str = "uniform"
    p_mean: float = -1.1
    p_std: float = 2.0
    skip: int = 1
    round_sigma: callable = None
    continuous: bool = False

    def grid(self, n_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _grid_and_probs(n_levels, self.sigma_min, self.sigma_max, self.rho, self.index_sampling,
                               self.p_mean, self.p_std, self.skip, self.round_sigma)

    def sample(self, k: int, batch: int, generator: torch.Generator | None = None):
        n_levels = self.levels(k)
        if not self.continuous:
            grid, probs = self.grid(n_levels)
            n = sample_indices(probs.to(generator.device if generator is not None else "cpu"), batch, generator)
            grid = grid.to(n.device)
            return grid[n], grid[n + self.skip]
        if n_levels - 1 < self.skip:
            raise ValueError(f"method.skip={self.skip} needs at least {self.skip + 1} levels, but N = {n_levels}")
        dev = generator.device if generator is not None else None
        top = n_levels - 1 - self.skip  # the highest lower-end position
        if self.index_sampling == "uniform":
            pos = top * torch.rand(batch, generator=generator, dtype=torch.float64, device=dev)
        else:
            sigma = truncated_lognormal(batch, self.sigma_min, self.sigma_max, self.p_mean, self.p_std, generator,
                                        dev)
            offset = self.skip * torch.rand(batch, generator=generator, dtype=torch.float64, device=dev)
            pos = karras_position(sigma, n_levels, self.sigma_min, self.sigma_max, self.rho) - offset
            # Reflected at the ends rather than clamped: a clamp would pile mass on the two end pairs.
            pos = torch.where(pos < 0, -pos, pos)
            pos = torch.where(pos > top, 2 * top - pos, pos).clamp(0, top)
        curve = lambda p: karras_at(p, n_levels, self.sigma_min, self.sigma_max, self.rho)
        lo, hi = curve(pos), curve(pos + self.skip)
        if self.round_sigma is not None:
            lo, hi = self.round_sigma(lo), self.round_sigma(hi)
        return lo, hi


@lru_cache(maxsize=8)
def _grid_and_probs(n_levels, sigma_min, sigma_max, rho, index_sampling, p_mean, p_std, skip, round_sigma):
    if n_levels - 1 < skip:
        raise ValueError(f"method.skip={skip} needs at least {skip + 1} grid levels, but N = {n_levels}")
    grid = cd_grid(n_levels, sigma_min, sigma_max, rho)
    if round_sigma is not None:  # discrete teachers snap the grid to the sigmas they were trained at
        grid = torch.as_tensor(round_sigma(grid), dtype=torch.float64)
    # Pairs (t_n, t_{n+skip}): the probability of n is that of the interval [t_n, t_{n+skip}].
    probs = index_probabilities(grid, index_sampling, p_mean, p_std, skip=skip)
    return grid, probs


@dataclass
class ECTPairs:
    """ECT's continuous pairs: t from a lognormal on [sigma_min, sigma_max], r = r(t) at stage(k)."""
    sigma_min: float
    sigma_max: float
    stage_steps: int
    q: float = 2.0
    kappa: float = 8.0
    b: float = 1.0
    p_mean: float = -1.1
    p_std: float = 2.0

    def sample(self, k: int, batch: int, generator: torch.Generator | None = None):
        dev = generator.device if generator is not None else None
        t = truncated_lognormal(batch, self.sigma_min, self.sigma_max, self.p_mean, self.p_std, generator, dev)
        r = ect_r(t, ect_stage(k, self.stage_steps), self.q, self.kappa, self.b).clamp_min(self.sigma_min)
        return r, t


@dataclass
class TimestepPairs:
    """LCM's skipping-step pairs on a discrete teacher's own timesteps (Luo et al. 2023, sec. 4.3; diffusers'
    `DDIMSolver`): t_{n+k} uniform over the T/k timesteps k i - 1 (i = 1..T/k), t_n = max(t_{n+k} - k, 0);
    returned as the sigmas of those timesteps. `sigmas` is the teacher's table (T,), increasing in t."""
    sigmas: torch.Tensor
    skip: int

    def __post_init__(self):
        T = len(self.sigmas)
        if not 1 <= self.skip <= T // 2:
            raise ValueError(f"method.skip={self.skip}: LCM pairs need 1 <= skip <= {T // 2} for a {T}-step teacher")
        self.starts = torch.arange(1, T // self.skip + 1) * self.skip - 1  # the DDIM timesteps, e.g. 19..999

    @property
    def levels(self) -> int:
        return len(self.starts)

    def sample(self, k: int, batch: int, generator: torch.Generator | None = None):
        dev = generator.device if generator is not None else None
        i = torch.randint(0, len(self.starts), (batch,), generator=generator, device=dev)
        t_next = self.starts.to(i.device)[i]
        t_cur = (t_next - self.skip).clamp_min(0)
        table = self.sigmas.to(device=i.device, dtype=torch.float64)
        return table[t_cur], table[t_next]
