"""Consistency training methods, one recipe key apart (`method.name`).

A method is a bundle of defaults for the parts of one consistency step; every `auto` key of the method
block takes its method's value, and any key set in the recipe wins (so "CD with the CT curriculum" or
"iCT with an EMA target" are one override away, not another code path):

| method | target x_cur at t_n            | pairs (t_n, t_{n+1})                  | target network rate mu        |
|--------|--------------------------------|---------------------------------------|-------------------------------|
| cd     | teacher ODE step (CM Alg. 2)   | Karras grid, fixed N, uniform n       | fixed `method.mu`             |
| ct     | x0 + t_n z (CM Alg. 3)         | CT curriculum N(k) (CM app. C)        | adaptive mu(k) (CM app. C)    |
| ict    | x0 + t_n z                     | iCT doubling N(k), lognormal n        | 0: stop-gradient (iCT 3.2)    |
| ect    | x0 + r z                       | continuous t ~ lognormal, r = r(t, k) | 0: stop-gradient              |
| lcm    | teacher's guided ODE step      | teacher timesteps k apart (LCM 4.3)   | fixed `method.mu` (0.95)      |
| scd    | teacher velocity dx_t/dt       | none: continuous t ~ lognormal (sCM)  | 0: stop-gradient + JVP        |
| sct    | data velocity cos t z - sin t x0 | none: continuous t ~ lognormal     | 0: stop-gradient + JVP        |

iCT's loss (pseudo-Huber, lambda = 1/(t_{n+1} - t_n)) and ECT's (pseudo-Huber with c = 0, i.e. the L2
norm, over 1/(t - r)) are set in the loss block, as the paper recipes do. ECT starts from the teacher's
weights (`student.init: auto` copies the teacher's backbone); with a teacher that has no network it
trains from scratch and says so. CT, iCT, ECT and sCT never evaluate the teacher during training.
sCD and sCT (distill/methods/scm.py) train the continuous-time limit with a TrigFlow student: no pairs, no target
network, their own loss (the loss block must stay l2/uniform), and the lognormal proposal's (P_mean, P_std) of
their paper unless the recipe sets method.p_mean / p_std.

Pairs: the table lists the papers' discrete levels (`method.pairs: grid`). By default (`continuous`) the pair
keeps the paper's gap (N levels, the same curriculum) but its position is drawn anywhere along the Karras
curve, so the student is trained at every sigma it will be sampled at (distill/methods/curriculum.py).

LCM (distill/methods/lcm.py) also changes the student's boundary scalings to LCMScheduler's, so that the
student exports to diffusers as it is; its guidance scale comes with the condition the teacher builds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from distill.config import register_choices, warm_start_steps
from distill.methods import curriculum as C
from distill.methods.targets import DataStep, TeacherStep


@dataclass(frozen=True)
class Method:
    name: str
    target: str  # "teacher" (ODE step) or "data" (x0 + t_n z)
    curriculum: str  # fixed | ct | ict | ect
    mu_schedule: str  # fixed | adaptive | none
    index_sampling: str  # uniform | lognormal
    from_teacher_weights: bool = False
    boundary: str | None = None  # None: the CM paper's scalings; "lcm": LCMScheduler's (distill/methods/lcm.py)
    parameterisation: str = "cm"  # the student's (distill/math/precond.py): cm, or trigflow (sCM)
    p_mean: float = -1.1  # lognormal proposal over ln(sigma): iCT sec. 3.5 (ECT keeps it); sCM's own below
    p_std: float = 2.0


METHODS = {
    "cd": Method("cd", target="teacher", curriculum="fixed", mu_schedule="fixed", index_sampling="uniform"),
    "ct": Method("ct", target="data", curriculum="ct", mu_schedule="adaptive", index_sampling="uniform"),
    "ict": Method("ict", target="data", curriculum="ict", mu_schedule="none", index_sampling="lognormal"),
    "ect": Method("ect", target="data", curriculum="ect", mu_schedule="none", index_sampling="lognormal",
                  from_teacher_weights=True),
    "lcm": Method("lcm", target="teacher", curriculum="timesteps", mu_schedule="fixed", index_sampling="uniform",
                  from_teacher_weights=True, boundary="lcm"),
    # sCM (Lu & Song 2024) on CIFAR-10: P_mean -1.0, P_std 1.4 for sCT and sCD alike (NVlabs FastGen's CIFAR-10 sCM
    # config, whose use_cd switch leaves the proposal as it is). FACTS.md's -0.8, 1.6 for CIFAR-10 sCD is not in
    # that config, and on the digits it halved sCD's quality (FID 40.9 against 21.5 over three seeds;
    # docs/benchmarks.md, "sCD's proposal").
    "scd": Method("scd", target="teacher", curriculum="continuous", mu_schedule="none", index_sampling="lognormal",
                  parameterisation="trigflow", p_mean=-1.0, p_std=1.4),
    "sct": Method("sct", target="data", curriculum="continuous", mu_schedule="none", index_sampling="lognormal",
                  parameterisation="trigflow", p_mean=-1.0, p_std=1.4),
}
# The recipe schema lists these names too (distill/config.py CHOICES, checked before this module loads);
# register_choices keeps the two in step when a method is added here.
register_choices("method.name", *METHODS)


@dataclass
class ConsistencyPlan:
    """A method block with every `auto` resolved: what one training step at step k needs."""
    method: Method
    curriculum: str
    mu_schedule: str
    target: object  # TeacherStep or DataStep: (x0, z, x_next, sigma_next, sigma_cur, cond) -> x_cur
    pairs: object  # GridPairs or ECTPairs: .sample(k, batch, generator) -> (sigma_cur, sigma_next)
    levels: object  # k -> N(k) (for logging; ECT: the fixed N of the block)
    mu_fixed: float
    mu0: float
    s0: int
    objective: object = None  # sCD/sCT: the continuous-time loss (an nn.Module holding w_phi); None: pairs
    mu_stretch: float = 1.0  # adaptive mu: ln(mu) times K_ref / K (distill/methods/curriculum.py, ct_mu)

    def mu(self, k: int) -> float:
        """Target network rate at step k (0 = the stop-gradient student itself)."""
        if self.mu_schedule == "fixed":
            return self.mu_fixed
        if self.mu_schedule == "adaptive":
            return C.ct_mu(self.levels(k), self.s0, self.mu0, self.mu_stretch)
        return 0.0

    @property
    def has_target_network(self) -> bool:
        return self.mu_schedule == "adaptive" or (self.mu_schedule == "fixed" and self.mu_fixed > 0)

    def training_sigmas(self, final_step: int) -> dict:
        """What the student is trained at, for student.json: {"pairs": "continuous"}, or the grid's levels at
        the last step (decreasing, as sampling lists sigmas) that sampling snaps to (distill/sampling.py)."""
        pairs = self.pairs
        if not isinstance(pairs, C.GridPairs) or pairs.continuous:
            return {"pairs": "continuous"}
        grid, _ = pairs.grid(self.levels(max(final_step, 0)))
        return {"pairs": "grid", "levels": [float(s) for s in grid.flip(0)]}


def _pick(value, default):
    return default if value in (None, "auto") else value


def _levels(curriculum: str, m, total: int):
    """k -> N(k) for a grid curriculum, with the paper's (s0, s1) unless the recipe sets them."""
    if curriculum in ("fixed", "ect", "timesteps"):
        return lambda k: m.N
    s0_default, s1_default = C.CT_DEFAULTS if curriculum == "ct" else C.ICT_DEFAULTS
    s0, s1 = _pick(m.s0, s0_default), _pick(m.s1, s1_default)
    fn = C.ct_N if curriculum == "ct" else C.ict_N
    return lambda k: fn(k, total, s0, s1)


def method_steps(cfg) -> int:
    """K: the method's own steps, those after the denoiser warm start (student.denoiser_steps/_fraction)."""
    return cfg.method.total_steps or cfg.trainer.max_steps - warm_start_steps(cfg)


def discrete_sigmas(teacher, method: str):
    """The sigma table of a discrete-time teacher (DDPM, Stable Diffusion), for pairs on its timesteps."""
    table = getattr(getattr(teacher, "feeding", None), "sigmas", None)
    if table is None:
        raise ValueError(f"method.name={method} pairs the teacher's own timesteps, but {type(teacher).__name__} "
                         "has no discrete sigma table; use a ddpm or diffusers_latent teacher, or "
                         "method.curriculum=fixed")
    return table


def timestep_pairs(teacher, m, sigma_min: float, sigma_max: float):
    """LCM's pairs on the teacher's own timesteps, `method.skip` apart, inside the student's sigma range."""
    import torch

    pairs = C.TimestepPairs(torch.as_tensor(discrete_sigmas(teacher, m.name)), m.skip)
    lo, hi = float(pairs.sigmas[0]), float(pairs.sigmas[pairs.starts].max())
    if lo < sigma_min * (1 - 1e-9) or hi > sigma_max * (1 + 1e-9):
        raise ValueError(f"method.name={m.name}: the teacher's timesteps span sigma [{lo:g}, {hi:g}], beyond the "
                         f"student's [{sigma_min:g}, {sigma_max:g}]; widen student.sigma_min / student.sigma_max")
    return pairs


def boundary_for(cfg, teacher):
    """The student's boundary scalings for this method: None (CM paper) or LCM's (distill/methods/lcm.py)."""
    method = METHODS[cfg.method.name]
    if method.boundary != "lcm":
        return None
    from distill.methods.lcm import LCMBoundary

    table = discrete_sigmas(teacher, cfg.method.name)
    return LCMBoundary(original_inference_steps=len(table) // cfg.method.skip)


def plan(cfg, teacher, sigma_min: float, sigma_max: float) -> ConsistencyPlan:
    """The method block (with its `auto`s) -> the pieces of a consistency training step."""
    import torch

    m = cfg.method
    method = METHODS[m.name]
    if method.parameterisation == "trigflow":
        return _continuous_plan(cfg, teacher, method, sigma_min, sigma_max)
    if m.solver_steps < 1 or m.skip < 1:
        raise ValueError(f"method.solver_steps ({m.solver_steps}) and method.skip ({m.skip}) must be at least 1")
    if m.dropout is not None and not 0 <= m.dropout < 1:
        raise ValueError(f"method.dropout must lie in [0, 1), got {m.dropout}")
    curriculum = _pick(m.curriculum, method.curriculum)
    mu_schedule = _pick(m.mu_schedule, method.mu_schedule)
    sampling = _pick(m.index_sampling, method.index_sampling)
    if mu_schedule == "none" and m.mu > 0:
        raise ValueError(f"method.mu={m.mu} has no effect: method {m.name} uses a stop-gradient target "
                         "(mu_schedule none); set method.mu_schedule=fixed to use an EMA target")
    if curriculum == "ect" and m.skip != 1:
        raise ValueError("method.skip applies to grid curricula; ECT draws continuous (t, r) pairs")
    total = method_steps(cfg)  # K of the curricula
    scaled_rate = mu_schedule == "adaptive" and m.mu_ref_steps is not None  # ln(mu) times mu_ref_steps / K
    needs_k = curriculum in ("ct", "ict") or (curriculum == "ect" and m.ect_stage_steps is None) or scaled_rate
    if total < 1 and needs_k:
        raise ValueError(f"method.name={m.name}: its curriculum and target rate are functions of k / K, and K (the "
                         f"method's steps: trainer.max_steps={cfg.trainer.max_steps} less any warm start) is not "
                         "a positive number; set trainer.max_steps, or method.total_steps")
    levels = _levels(curriculum, m, total)
    if curriculum == "timesteps":
        pairs = timestep_pairs(teacher, m, sigma_min, sigma_max)
        levels = lambda k, n=pairs.levels: n
    elif curriculum == "ect":
        pairs = C.ECTPairs(sigma_min, sigma_max, m.ect_stage_steps or max(total // 8, 1), m.ect_q, m.ect_k,
                           m.ect_b, _pick(m.p_mean, method.p_mean), _pick(m.p_std, method.p_std))
    else:
        pairs = C.GridPairs(levels, sigma_min, sigma_max, m.rho, sampling, _pick(m.p_mean, method.p_mean),
                            _pick(m.p_std, method.p_std), m.skip,
                            getattr(teacher, "round_sigma", None) if method.target == "teacher" else None,
                            continuous=m.pairs == "continuous")
    if method.target == "teacher":
        target = TeacherStep(teacher.denoise, m.solver, m.solver_steps, m.rho, getattr(torch, m.target_dtype))
    else:
        target = DataStep()
    scratch = getattr(teacher, "backbone", None) is None or cfg.student.init == "network"
    if method.from_teacher_weights and scratch and not cfg.run.smoke:
        warnings.warn(f"method.name={m.name} tunes the teacher's weights, but the student does not start from "
                      "them (no teacher network, or student.init=network): it trains from scratch", stacklevel=2)
    s0 = _pick(m.s0, C.CT_DEFAULTS[0] if curriculum != "ict" else C.ICT_DEFAULTS[0])
    return ConsistencyPlan(method, curriculum, mu_schedule, target, pairs, levels, m.mu, m.mu0, s0,
                           mu_stretch=m.mu_ref_steps / total if scaled_rate else 1.0)


def _continuous_plan(cfg, teacher, method: Method, sigma_min: float, sigma_max: float) -> ConsistencyPlan:
    """sCD / sCT: the lognormal proposal and the sCM objective; the discrete keys must keep their defaults."""
    import torch

    from distill.methods.scm import SCMObjective, TrigFlowTimes, Velocity

    m, loss = cfg.method, cfg.loss
    ignored = {"method.curriculum": (m.curriculum, ("auto", "continuous")),
               "method.index_sampling": (m.index_sampling, ("auto", "lognormal")),
               "method.mu_schedule": (m.mu_schedule, ("auto", "none")), "method.mu": (m.mu, (0, 0.0)),
               "method.solver_steps": (m.solver_steps, (1,)), "method.skip": (m.skip, (1,)),
               "method.pairs": (m.pairs, ("continuous",)),
               "loss.name": (loss.name, ("l2",)), "loss.weighting": (loss.weighting, ("uniform",))}
    wrong = [f"{key}={value}" for key, (value, allowed) in ignored.items() if value not in allowed]
    if wrong:
        raise ValueError(f"method.name={m.name} trains sCM's own continuous-time objective (distill/methods/scm.py): "
                         f"{', '.join(wrong)} would have no effect; remove them from the recipe")
    if m.tangent_warmup_steps < 0 or m.tangent_c <= 0 or m.weighting_lr < 0:
        raise ValueError(f"method.tangent_warmup_steps ({m.tangent_warmup_steps}) and method.weighting_lr "
                         f"({m.weighting_lr}) must be >= 0, method.tangent_c ({m.tangent_c}) > 0")
    times = TrigFlowTimes(sigma_min, sigma_max, _pick(m.p_mean, method.p_mean), _pick(m.p_std, method.p_std))
    velocity = Velocity(teacher, method.target, teacher.sigma_data, getattr(torch, m.target_dtype))
    objective = SCMObjective(velocity, times, m.tangent_warmup_steps, m.tangent_c)
    return ConsistencyPlan(method, "continuous", "none", target=velocity, pairs=times, levels=lambda k: 0,
                           mu_fixed=0.0, mu0=0.0, s0=0, objective=objective)
