"""Full-size architectures match the published parameter counts and key names; layouts match references.

Full-size networks are built on the meta device (no memory, no init cost), so these checks are fast.
"""

from __future__ import annotations

import math

import pytest
import torch

from teachers.networks import build_network
from teachers.networks.adm_unet import AttentionBlock
from teachers.networks.edm_layers import UNetBlock
from teachers.openai_cm import ARCHS


def meta(name, **kwargs):
    with torch.device("meta"):
        return build_network(name, **kwargs)


def millions(net) -> float:
    return round(sum(p.numel() for p in net.parameters()) / 1e6, 1)


DDPMPP_CIFAR10 = dict(img_resolution=32, in_channels=3, dropout=0.13, augment_dim=9)


def test_published_parameter_counts():
    assert millions(meta("ddpmpp", **DDPMPP_CIFAR10)) == 55.7  # EDM cifar10 "vp" files
    assert millions(meta("adm_unet", **ARCHS["imagenet64"])) == 295.9  # OpenAI edm_imagenet64_ema.pt
    assert millions(meta("adm_unet", **ARCHS["bedroom256"])) == 526.3  # edm_bedroom256_ema.pt
    assert millions(meta("adm_unet", **ARCHS["cat256"])) == 526.3
    # EDM's own ImageNet-64 ADM (DhariwalUNet) is the same 296M network under other names.
    assert millions(meta("dhariwal_unet", img_resolution=64, in_channels=3, out_channels=3, label_dim=1000)) == 295.9


def test_edm_key_names():
    keys = set(meta("ddpmpp", **DDPMPP_CIFAR10).state_dict())
    for k in ["map_label.weight", "map_noise.freqs"]:
        assert k not in keys  # unconditional; positional embedding has no buffer
    for k in ["map_augment.weight", "map_layer0.weight", "map_layer1.bias", "enc.32x32_conv.weight",
              "enc.32x32_block0.norm0.weight", "enc.32x32_block0.affine.weight", "enc.32x32_block0.conv1.bias",
              "enc.16x16_down.conv0.resample_filter", "enc.16x16_down.skip.weight", "enc.32x32_block0.skip.weight",
              "enc.16x16_block0.norm2.weight", "enc.16x16_block0.qkv.weight", "enc.16x16_block0.proj.bias",
              "dec.8x8_in0.qkv.weight", "dec.8x8_in1.conv0.weight", "dec.16x16_up.conv0.resample_filter",
              "dec.16x16_block4.qkv.weight", "dec.32x32_block4.conv0.weight", "dec.32x32_aux_norm.weight",
              "dec.32x32_aux_conv.weight"]:
        assert k in keys, k
    assert "dec.16x16_block3.qkv.weight" not in keys  # decoder attention only after the last block
    assert "map_augment.bias" not in keys and "enc.16x16_block0.skip.weight" not in keys  # 256 -> 256
    ncsn = set(meta("ncsnpp", **DDPMPP_CIFAR10).state_dict())
    assert {"map_noise.freqs", "enc.16x16_aux_residual.weight", "enc.8x8_aux_residual.resample_filter"} <= ncsn
    adm = set(meta("dhariwal_unet", img_resolution=64, in_channels=3, out_channels=3, label_dim=1000).state_dict())
    assert {"map_label.weight", "out_norm.weight", "out_conv.weight", "enc.64x64_block0.affine.weight",
            "enc.32x32_down.skip.resample_filter"} <= adm
    assert "map_label.bias" not in adm and "enc.32x32_down.skip.weight" not in adm  # kernel-0 skip: filter only


def test_openai_key_names():
    keys = set(meta("adm_unet", **ARCHS["imagenet64"]).state_dict())
    for k in ["time_embed.0.weight", "time_embed.2.bias", "label_emb.weight", "input_blocks.0.0.weight",
              "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
              "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.0.bias",
              "input_blocks.1.0.out_layers.3.weight", "input_blocks.5.1.qkv.weight", "input_blocks.5.1.proj_out.bias",
              "input_blocks.4.0.in_layers.2.weight", "middle_block.1.norm.weight", "middle_block.2.out_layers.3.bias",
              "output_blocks.0.0.skip_connection.weight", "output_blocks.3.2.in_layers.2.weight", "out.0.weight",
              "out.2.weight"]:
        assert k in keys, k
    assert "input_blocks.1.1.qkv.weight" not in keys  # no attention at 64x64 (ds = 1)
    # ImageNet-64 uses scale-shift norm: the embedding projection is twice as wide.
    with torch.device("meta"):
        sd = build_network("adm_unet", **ARCHS["imagenet64"]).state_dict()
    assert sd["input_blocks.1.0.emb_layers.1.weight"].shape == (2 * 192, 4 * 192)
    assert sd["input_blocks.5.1.qkv.weight"].shape == (3 * 384, 384, 1, 1)


def attention_reference(qkv: torch.Tensor, heads: int, layout: str) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, for qkv (B, 3C, T) laid out as `layout` says."""
    b, c3, t = qkv.shape
    c, d = c3 // 3, c3 // 3 // heads
    if layout == "three heads dim":  # OpenAI flash-attention order
        q, k, v = qkv.reshape(b, 3, heads, d, t).unbind(1)
    else:  # "heads dim three": EDM's order
        q, k, v = qkv.reshape(b, heads, d, 3, t).unbind(3)
    w = torch.softmax(torch.einsum("bhdq,bhdk->bhqk", q, k) / math.sqrt(d), dim=-1)
    return torch.einsum("bhqk,bhdk->bhdq", w, v).reshape(b, c, t)


def test_adm_attention_reads_qkv_as_three_heads_dim():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16).eval()  # 4 heads
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 64, 4, 4)
    qkv = block.qkv(block.norm(x)).reshape(2, 192, 16)
    want = x + block.proj_out(attention_reference(qkv, 4, "three heads dim").reshape(2, 64, 4, 4))
    legacy = x + block.proj_out(attention_reference(qkv, 4, "heads dim three").reshape(2, 64, 4, 4))
    assert torch.allclose(block(x), want, atol=1e-5)
    assert not torch.allclose(block(x), legacy, atol=1e-3)


def test_edm_attention_reads_qkv_as_heads_dim_three():
    torch.manual_seed(0)
    block = UNetBlock(64, 64, 8, attention=True, channels_per_head=16, init_zero={}).eval()
    x, emb = torch.randn(2, 64, 4, 4), torch.randn(2, 8)
    h = block(x, emb)
    block.num_heads = 0
    pre = block(x, emb)  # the residual part alone
    qkv = block.qkv(block.norm2(pre)).reshape(2, 192, 16)
    want = (block.proj(attention_reference(qkv, 4, "heads dim three").reshape(2, 64, 4, 4)) + pre) * block.skip_scale
    assert torch.allclose(h, want, atol=1e-5)


def test_song_unet_noise_embedding_is_sin_then_cos_with_endpoint():
    net = build_network("ddpmpp", img_resolution=8, in_channels=3, model_channels=8, channel_mult=[1],
                        num_blocks=1, attn_resolutions=[])
    c = torch.tensor([0.3, -1.2])
    emb = net.map_noise(c)  # [cos, sin] with endpoint=True frequencies (FACTS.md port gotchas)
    freqs = (1 / 10000) ** (torch.arange(4) / 3)
    assert torch.allclose(emb, torch.cat([(c[:, None] * freqs).cos(), (c[:, None] * freqs).sin()], 1))


@pytest.mark.parametrize("name,kwargs", [
    ("ddpmpp", dict(label_dim=4)), ("ncsnpp", dict(label_dim=0)),
    ("song_unet", dict(out_channels=3, encoder_type="skip", decoder_type="skip")),
    ("dhariwal_unet", dict(out_channels=3, label_dim=4, model_channels=16)),
    ("adm_unet", dict(image_size=8, model_channels=32, num_head_channels=16, attention_resolutions=[4],
                      channel_mult=[1, 2], num_classes=4, use_scale_shift_norm=True, resblock_updown=True)),
    ("adm_unet", dict(image_size=8, model_channels=32, attention_resolutions=[4], channel_mult=[1, 2])),
    ("edm2_unet", dict(img_channels=3, label_dim=4, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                       attn_resolutions=[4], channels_per_head=16)),
])
def test_small_variants_run_forward_and_backward(name, kwargs):
    common = {} if name in ("adm_unet", "edm2_unet") else dict(img_resolution=8, in_channels=3, model_channels=8,
                                                                channel_mult=[1, 2], num_blocks=1,
                                                                attn_resolutions=[4])
    if name == "edm2_unet":
        common = dict(img_resolution=8)
    net = build_network(name, **{**common, **kwargs})
    labels = torch.tensor([1, 3]) if kwargs.get("label_dim") or kwargs.get("num_classes") else None
    out = net(torch.randn(2, 3, 8, 8), torch.tensor([0.1, -0.5]), labels)
    assert out.shape == (2, 3, 8, 8)
    out.square().mean().backward()
    assert net.build_spec["name"] == name
