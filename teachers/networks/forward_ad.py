"""Forward-mode JVPs through the networks, exact and cheap (sCM's time derivative of the student).

- `jvp(fn, primals, tangents)`: fn's value and directional derivative by PyTorch's forward-mode AD
  (torch.autograd.forward_ad, the engine under torch.func.jvp, which costs ~25% more per op on small networks:
  measured, docs/benchmarks.md), with `CheapTangents` active. torch.func.jvp works through every network too.
- `CheapTangents`: PyTorch's built-in tangent rules materialise a zero tangent for weights that carry none and
  convolve it (three convolutions per layer instead of two), and differentiate group norm op by op (~14 forward
  costs on the CPU). Under this mode, conv2d, conv_transpose2d, linear and group_norm calls whose input carries a
  tangent use the rules below instead: the tangent is the layer's own (linear) map of the input's tangent, and
  group norm's is (dx - mean(dx) - xhat mean(xhat dx)) rstd, scaled by its weight.
- `wide(dtype)`: the dtype of the parts computed "in float32 whatever the activation dtype" (softmax, group norm,
  embeddings): float32, but float64 stays float64, so a float64 check sees no float32 rounding.
- `jvp_safe_attention()`: PyTorch's fused attention kernels (flash, memory-efficient, the CPU flash kernel) have
  no forward-mode derivative (torch 2.x raises NotImplementedError); its composite math kernel is matmul +
  softmax, which forward mode differentiates exactly. Selected only while a tangent flows.
- `forward_mode_active()`: EDM2's forced weight normalisation writes the weights in training passes; under a JVP
  (torch.func refuses writes to captured tensors) it must compute the same values without writing them.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as tF
from torch.autograd import forward_ad
from torch.overrides import TorchFunctionMode


def wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def has_tangent(*tensors: torch.Tensor) -> bool:
    """True inside torch.func.jvp (or a forward_ad dual level) for a tensor that carries a tangent."""
    return any(isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def forward_mode_active() -> bool:
    """Inside torch.func.jvp or a forward_ad.dual_level. torch keeps the current dual level in
    forward_ad._current_level (-1 outside; tests/test_jvp.py checks it)."""
    return getattr(forward_ad, "_current_level", -1) >= 0


def jvp_safe_attention(*tensors: torch.Tensor):
    """A context for F.scaled_dot_product_attention calls on `tensors`: the math kernel under a JVP."""
    if not has_tangent(*tensors):
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v), differentiable in forward mode."""
    with jvp_safe_attention(q, k, v):
        return tF.scaled_dot_product_attention(q, k, v)


def jvp(fn, primals: tuple, tangents: tuple):
    """(fn(*primals), d/ds fn(primals + s tangents) at s = 0), one forward pass."""
    with forward_ad.dual_level(), CheapTangents():
        out = fn(*[forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)])
        value, tangent = forward_ad.unpack_dual(out)
    return value, (tangent if tangent is not None else torch.zeros_like(value))


class _Linear(torch.autograd.Function):
    """A layer linear in its input, y = op(x, w) + b: dy = op(dx, w) [+ op(x, dw) + db when those exist]."""

    @staticmethod
    def forward(op, x, w, b, *conf):
        return op(x, w, b, *conf)

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, x, w, _, *conf = inputs
        ctx.op, ctx.conf = op, conf
        ctx.save_for_forward(x, w)
        ctx.set_materialize_grads(False)  # absent tangents stay None: no zero weight tangent to convolve

    @staticmethod
    def jvp(ctx, _op, dx, dw, db, *_conf):
        x, w = ctx.saved_tensors
        out = ctx.op(dx, w, None, *ctx.conf)
        if dw is not None:
            out = out + ctx.op(x, dw, None, *ctx.conf)
        if db is not None:
            out = out + db.view(1, -1, *[1] * (out.ndim - 2))
        return out

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("CheapTangents' layers are for forward-mode passes only (no backward)")


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(x, groups, w, b, eps):
        return tF.group_norm(x, groups, w, b, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.groups, w, _, ctx.eps = inputs
        ctx.save_for_forward(x, w)
        ctx.set_materialize_grads(False)

    @staticmethod
    def jvp(ctx, dx, _groups, dw, db, _eps):
        x, w = ctx.saved_tensors
        n, c = x.shape[:2]
        xg, dg = x.reshape(n, ctx.groups, -1), dx.reshape(n, ctx.groups, -1)
        var, mean = torch.var_mean(xg, dim=2, keepdim=True, correction=0)
        rstd = (var + ctx.eps).rsqrt()
        xhat = (xg - mean) * rstd
        out = ((dg - dg.mean(2, keepdim=True) - xhat * (xhat * dg).mean(2, keepdim=True)) * rstd).view_as(x)
        shape = (1, c) + (1,) * (x.ndim - 2)
        if w is not None:
            out = out * w.view(shape)
        if dw is not None:
            out = out + xhat.view_as(x) * dw.view(shape)
        if db is not None:
            out = out + db.view(shape)
        return out

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("CheapTangents' layers are for forward-mode passes only (no backward)")


def _conv(op, defaults: dict):
    names = list(defaults)

    def rule(input, weight, bias=None, *conf, **kw):
        if set(kw) - set(names):  # an argument this rule does not know: PyTorch's own tangent rule
            return op(input, weight, bias, *conf, **kw)
        values = {**defaults, **dict(zip(names, conf)), **kw}
        return _Linear.apply(op, input, weight, bias, *[values[n] for n in names])
    return rule


def _linear(input, weight, bias=None):
    return _Linear.apply(tF.linear, input, weight, bias)


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    return _GroupNorm.apply(input, num_groups, weight, bias, eps)


_RULES = {tF.conv2d: _conv(tF.conv2d, dict(stride=1, padding=0, dilation=1, groups=1)),
          tF.conv_transpose2d: _conv(tF.conv_transpose2d, dict(stride=1, padding=0, output_padding=0, groups=1,
                                                               dilation=1)),
          tF.linear: _linear, tF.group_norm: _group_norm}


class CheapTangents(TorchFunctionMode):
    """Routes conv2d / conv_transpose2d / linear / group_norm calls with a tangent-carrying input to the rules above."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None and args and has_tangent(args[0]):
            return rule(*args, **kwargs)
        return func(*args, **kwargs)
