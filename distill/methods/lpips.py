"""LPIPS (Zhang et al. 2018) with a VGG16 backbone, as the consistency-models paper uses it for CD.

Weights come from two local files, nothing is downloaded:
- `loss.lpips_backbone_path`: torchvision's VGG16 state dict (`vgg16-397923af.pth`, keys `features.N.*`).
- `loss.lpips_heads_path`: the five 1x1 linear heads that the `lpips` package ships (`weights/v0.1/vgg.pth`,
  keys `lin{i}.model.1.weight`); when unset, the copy inside the installed `lpips` package is used.

The CM paper's implementation (OpenAI's consistency_models, via piq's LPIPS) differs from the original in
two switches, both on by default here: VGG's max pooling is replaced by average pooling
(`loss.lpips_avg_pool`), and images smaller than 224 px are bilinearly upsampled to 224
(`loss.lpips_resize`). Their input mapping ([-1, 1] -> [0, 1], then ImageNet mean/std) is the same affine
map as the `lpips` package's ScalingLayer on [-1, 1] (shift = 2 mean - 1, scale = 2 std), applied once here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
import torch.nn.functional as tF
from torch import nn

# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features.
TAPS = (3, 8, 15, 22, 29)
CHANNELS = (64, 128, 256, 512, 512)
MIN_SIZE = 16  # four 2x poolings before relu5_3: smaller images are upsampled to this even with resize 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def packaged_heads_path() -> Path | None:
    """The VGG heads inside the installed `lpips` package (found without importing it), or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "vgg.pth"
    return path if path.is_file() else None


def _require(path, key: str, hint: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"{key} is not set; {hint}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist; {hint}")
    return path


def vgg16_features(avg_pool: bool) -> nn.Sequential:
    """torchvision's VGG16 conv stack up to relu5_3 (random weights), optionally with average pooling."""
    from torchvision.models.vgg import cfgs, make_layers

    # vgg16().features without building (and initialising) the 120M-parameter classifier.
    layers = list(make_layers(cfgs["D"]).children())[: TAPS[-1] + 1]
    if avg_pool:
        layers = [nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m for m in layers]
    return nn.Sequential(*layers)


def read_heads(path: Path) -> list[torch.Tensor]:
    """The five (1, C, 1, 1) head weights from an `lpips`-package file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    heads = {}
    for key, value in state.items():
        m = re.fullmatch(r"lin(\d)\.model\.1\.weight", key)
        if m:
            heads[int(m.group(1))] = value.float()
    shapes = [tuple(heads[i].shape) if i in heads else None for i in range(5)]
    if shapes != [(1, c, 1, 1) for c in CHANNELS]:
        raise ValueError(f"{path}: expected the lpips package's VGG heads lin0..lin4.model.1.weight of shapes "
                         f"(1, C, 1, 1) for C in {CHANNELS}; found {shapes}")
    return [heads[i] for i in range(5)]


class LPIPS(nn.Module):
    """d(a, b) -> (B,) for images in [-1, 1] of shape (B, C, H, W); C = 1 is repeated to RGB."""

    def __init__(self, features: nn.Sequential, heads: list[torch.Tensor], resize: int = 224,
                 exact_size: bool = False):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        for m in self.features.modules():  # in-place ReLUs would overwrite the tapped activations
            if isinstance(m, nn.ReLU):
                m.inplace = False
        for i, w in enumerate(heads):
            self.register_buffer(f"head{i}", w)
        self.resize, self.exact_size = int(resize), bool(exact_size)
        self.register_buffer("shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 2 - 1)
        self.register_buffer("scale", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 2)

    @classmethod
    def from_files(cls, backbone_path, heads_path=None, avg_pool: bool = True, resize: int = 224) -> LPIPS:
        backbone = _require(backbone_path, "loss.lpips_backbone_path",
                            "give a local copy of torchvision's VGG16 weights (vgg16-397923af.pth)")
        heads_path = heads_path or packaged_heads_path()
        heads = _require(heads_path, "loss.lpips_heads_path",
                         "install the `lpips` package (it ships weights/v0.1/vgg.pth) or give that file's path")
        features = vgg16_features(avg_pool)
        state = torch.load(backbone, map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        wanted = set(features.state_dict())
        if not wanted <= set(feats):
            raise ValueError(f"{backbone}: not a torchvision VGG16 state dict (missing "
                             f"{sorted(wanted - set(feats))[:4]} under `features.`)")
        features.load_state_dict({k: feats[k] for k in wanted})
        return cls(features, read_heads(heads), resize)

    @classmethod
    def random(cls, avg_pool: bool = True, resize: int = 0, seed: int = 0, exact_size: bool = False) -> LPIPS:
        """Random weights of the same architecture: run.smoke (plumbing, never quality)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            features = vgg16_features(avg_pool)
            heads = [torch.rand(1, c, 1, 1) for c in CHANNELS]
        return cls(features, heads, resize, exact_size)

    @classmethod
    def from_config(cls, loss_cfg, smoke: bool = False) -> LPIPS:
        if smoke:  # no files, and every image resized to 32 px: seconds on a CPU, as run.smoke promises
            return cls.random(loss_cfg.lpips_avg_pool, resize=32, exact_size=True)
        return cls.from_files(loss_cfg.lpips_backbone_path, loss_cfg.lpips_heads_path,
                              loss_cfg.lpips_avg_pool, loss_cfg.lpips_resize)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.resize or MIN_SIZE
        if tuple(x.shape[-2:]) != (size, size) and (self.exact_size or min(x.shape[-2:]) < size):
            x = tF.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - self.shift) / self.scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self._prepare(torch.cat([a, b]).float())
        out = torch.zeros(a.shape[0], device=a.device, dtype=h.dtype)
        head = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                # Unit-normalise each position's channel vector, then a learned weighted squared distance.
                f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                fa, fb = f.chunk(2)
                w = getattr(self, f"head{head}")
                out = out + ((fa - fb).pow(2) * w).sum(1).mean((1, 2))
                head += 1
        return out
