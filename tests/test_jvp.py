"""sCM's time derivative through every network family: the forward-mode JVP equals a central finite difference
in float64 (relative error <= 1e-6) and torch.func.jvp's, in training mode with dropout on (the masks fixed by a
forked RNG), through attention and group norm; the cheaper tangent rules are the ones taken; under bf16 autocast
the JVP still runs in float32."""

from __future__ import annotations

import copy

import pytest
import torch

from distill.math.precond import ConsistencyStudent
from distill.math.trigflow import TrigFlowFeeding, time_derivative, trigflow_F
from distill.training.module import dropout_masks
from teachers.base import BackboneFeeding, expand_like
from teachers.networks import build_network

SD = 0.5
# Tiny random networks of each family, with attention where the family has it and dropout on.
NETWORKS = {
    "small_unet": ((1, 8, 8), 0, dict(name="small_unet", in_channels=1, width=8, channel_mult=[1, 2], dropout=0.2)),
    "mlp": ((4,), 3, dict(name="mlp", dim=4, width=16, depth=2, num_classes=3, dropout=0.2)),
    "ddpmpp": ((3, 8, 8), 3, dict(name="ddpmpp", img_resolution=8, label_dim=3, model_channels=16,
                                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.2)),
    "ncsnpp": ((3, 8, 8), 0, dict(name="ncsnpp", img_resolution=8, model_channels=16, channel_mult=[1, 2],
                                  num_blocks=1, attn_resolutions=[4], dropout=0.2)),
    "dhariwal_unet": ((3, 8, 8), 3, dict(name="dhariwal_unet", img_resolution=8, in_channels=3, out_channels=3,
                                         label_dim=3, model_channels=32, channel_mult=[1, 2], num_blocks=1,
                                         attn_resolutions=[4], dropout=0.2)),
    "adm_unet": ((3, 8, 8), 3, dict(name="adm_unet", image_size=8, model_channels=32, num_res_blocks=1,
                                    attention_resolutions=[4], channel_mult=[1, 2], num_classes=3, num_heads=2,
                                    use_scale_shift_norm=True, resblock_updown=True, dropout=0.2)),
    "edm2_unet": ((3, 8, 8), 3, dict(name="edm2_unet", img_resolution=8, img_channels=3, label_dim=3,
                                     model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                     dropout=0.2)),
}


def trigflow_student(spec: dict, shape, num_classes: int, feeding) -> ConsistencyStudent:
    torch.manual_seed(0)
    net = build_network(**spec)
    with torch.no_grad():  # zero-initialised output layers would make every derivative trivially zero
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ConsistencyStudent(net, feeding, sigma_min=0.002, sigma_max=80.0, sigma_data=SD, image_shape=shape,
                              num_classes=num_classes, parameterisation="trigflow").double().train()


def jvp_and_finite_difference(student, shape, num_classes: int, eps: float = 1e-6):
    """time_derivative's cos t sin t dF/dt against (G(eps) - G(-eps)) / 2 eps, G(s) = F at (x + s c v, t + s c),
    c = cos t sin t. Every pass from the same weights (EDM2 renormalises them in training mode) and masks."""
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, *shape, generator=g, dtype=torch.float64) * SD
    t = torch.tensor([0.3, 0.9, 1.4], dtype=torch.float64)
    v = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    cond = torch.tensor([0, 2, 1]) if num_classes else None
    state = copy.deepcopy(student.state_dict())

    def run(fn):
        student.load_state_dict(state)
        with dropout_masks(1234, torch.device("cpu")):
            return fn()

    F, J = run(lambda: time_derivative(student, x_t, t, v, cond))
    c = t.cos() * t.sin()
    # torch.func.jvp with PyTorch's own tangent rules gives the same derivative (float64 rounding apart).
    _, J_func = run(lambda: torch.func.jvp(lambda x_, t_: trigflow_F(student, x_, t_, cond), (x_t, t),
                                           (expand_like(c, v) * v, c)))
    assert ((J - J_func).norm() / J_func.norm()).item() < 1e-10
    G = lambda s: run(lambda: trigflow_F(student, x_t + s * expand_like(c, v) * v, t + s * c, cond).detach())
    fd = (G(eps) - G(-eps)) / (2 * eps)
    return F, J, fd, G(0.0)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_jvp_equals_central_difference_in_float64(name):
    shape, classes, spec = NETWORKS[name]
    student = trigflow_student(spec, shape, classes, TrigFlowFeeding(SD))
    F, J, fd, F0 = jvp_and_finite_difference(student, shape, classes)
    err = ((J - fd).norm() / fd.norm()).item()
    print(f"{name}: |JVP - FD| / |FD| = {err:.2e}")
    assert err <= 1e-6, (name, err)
    assert fd.norm() > 1e-3 * F0.norm() > 0  # a derivative that is really there
    assert torch.equal(F, F0)  # the JVP's primal is an ordinary pass with the same dropout masks


def test_jvp_through_a_copied_teacher_backbone_edm_feeding():
    """A student copied from a teacher keeps the teacher's feeding (c_noise = ln(sigma)/4): F = -F_edm."""
    shape, classes, spec = NETWORKS["ddpmpp"]
    student = trigflow_student(spec, shape, classes, BackboneFeeding(SD))
    _, J, fd, _ = jvp_and_finite_difference(student, shape, classes)
    assert ((J - fd).norm() / fd.norm()).item() <= 1e-6


def test_jvp_through_diffusers_attention():
    """diffusers' UNet (DDPM teachers): exact along x in float64; its own timestep embedding is float32."""
    pytest.importorskip("diffusers")
    config = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=[16, 32],
                  down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                  norm_num_groups=8, attention_head_dim=8)
    torch.manual_seed(0)
    net = build_network("diffusers_unet2d", config=config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net = net.double().train()
    g = torch.Generator().manual_seed(1)
    x, v = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([10.0, 500.0], dtype=torch.float64)
    _, J = torch.func.jvp(lambda x_: net(x_, t), (x,), (v,))
    eps = 1e-6
    fd = (net(x + eps * v, t) - net(x - eps * v, t)).detach() / (2 * eps)
    assert ((J - fd).norm() / fd.norm()).item() <= 1e-6


def test_jvp_runs_in_float32_under_bf16_autocast():
    shape, classes, spec = NETWORKS["adm_unet"]
    student = trigflow_student(spec, shape, classes, TrigFlowFeeding(SD)).float().eval()
    x_t = torch.randn(2, *shape) * SD
    t, v, cond = torch.tensor([0.4, 1.2]), torch.randn(2, *shape), torch.tensor([1, 2])
    F32, J32 = time_derivative(student, x_t, t, v, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        F, J = time_derivative(student, x_t, t, v, cond)
    assert J.dtype == torch.float32
    assert torch.equal(J, J32) and torch.equal(F, F32)


def test_forward_mode_is_detected_inside_a_jvp_only():
    """EDM2's weight write-back and the attention kernel choice rely on it (teachers/networks/forward_ad.py)."""
    from teachers.networks.forward_ad import forward_mode_active, has_tangent

    seen = []
    torch.func.jvp(lambda x: seen.append((forward_mode_active(), has_tangent(x), has_tangent(x.detach()))) or x,
                   (torch.ones(2),), (torch.ones(2),))
    assert seen == [(True, True, False)] and not forward_mode_active()


def test_the_cheaper_tangent_rules_are_taken(monkeypatch):
    from teachers.networks import forward_ad

    calls = []
    for cls in (forward_ad._Linear, forward_ad._GroupNorm):
        inner = cls.jvp
        monkeypatch.setattr(cls, "jvp", staticmethod(lambda ctx, *a, _inner=inner, _cls=cls:
                                                     calls.append(_cls.__name__) or _inner(ctx, *a)))
    shape, classes, spec = NETWORKS["small_unet"]
    student = trigflow_student(spec, shape, classes, TrigFlowFeeding(SD))
    time_derivative(student, torch.randn(2, *shape, dtype=torch.float64), torch.tensor([0.5, 1.0]).double(),
                    torch.randn(2, *shape, dtype=torch.float64))
    assert calls.count("_GroupNorm") == sum(isinstance(m, torch.nn.GroupNorm) for m in student.modules())
    convs_and_linears = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in student.modules())
    assert calls.count("_Linear") == convs_and_linears
