"""The Inception-v3 network behind FID (Heusel et al. 2017), built here, loaded from a plain state dict.

Weights: `pt_inception-2015-12-05-6726825d.pth`, the TF1 2015-12-05 graph converted to a PyTorch state dict
by pytorch-fid (torch-fidelity ships the same tensors). It loads with `torch.load(weights_only=True)`,
unlike clean-fid's TorchScript file, which executes code when loaded (FACTS.md). Layer names follow
torchvision's `inception_v3`, because that is the naming the file uses.

The TF1 graph differs from torchvision's Inception in four places, all reproduced here (they change
the features, hence every published FID): the average pools of blocks A, C and the first E block do not
count padding; the second E block max-pools its pool branch; the classifier has 1008 outputs.

Protocol (published CIFAR-10/ImageNet numbers): images are quantised to uint8, resized to 299x299 with
TF1's bilinear resize (align_corners=False *without* half-pixel centres: source = dest * in / out),
mapped by (x - 128) / 128, and the 2048-d pool3 activations are the features.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights file is not on disk. Nothing is ever downloaded on the user's behalf."""


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)  # TF's epsilon

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF's padding semantics


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """`pool`: 'avg' in Mixed_7b, 'max' in Mixed_7c (a quirk of the TF1 graph)."""

    def __init__(self, cin, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `resize_bilinear(align_corners=False)`: source index = dest index * in / out, no half-pixel
    offset (unlike torch's `interpolate`), clamped at the last pixel. x: (B, C, H, W) float."""
    def axis(n_in):
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, (src - i0).to(x.dtype)

    h0, h1, fh = axis(x.shape[2])
    w0, w1, fw = axis(x.shape[3])
    rows = x[:, :, h0] + (x[:, :, h1] - x[:, :, h0]) * fh[:, None]  # (B, C, size, W)
    return rows[..., w0] + (rows[..., w1] - rows[..., w0]) * fw


class FIDInceptionV3(nn.Module):
    """Images in [-1, 1], (B, 1 or 3, H, W) -> (B, 2048) pool3 features, by the FID protocol above."""

    feature_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # unused for features; present so the state dict loads strictly

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # as saved to PNG: uint8 values
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = tf1_resize_bilinear(x, 299)
        return (x - 128) / 128

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))  # (B, 2048) pool3


def default_weights_path() -> Path:
    """Where a user is most likely to have the file already: $DISTILL_CACHE, else pytorch-fid's cache."""
    if os.environ.get("DISTILL_CACHE"):
        return Path(os.environ["DISTILL_CACHE"]) / WEIGHTS_FILE
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints" / WEIGHTS_FILE


def load_inception(path: str | os.PathLike | None = None) -> FIDInceptionV3:
    """The FID network with the weights in `path` (default: `default_weights_path()`), in eval mode."""
    path = Path(path) if path else default_weights_path()
    if not path.is_file():
        raise InceptionWeightsMissing(
            f"Inception weights not found at {path}. FID with Inception features needs the plain state "
            f"dict {WEIGHTS_FILE} (pytorch-fid / torch-fidelity); download it yourself from {WEIGHTS_URL} "
            "and pass its path (--inception FILE or eval.inception_path), or use digits/pixel features.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = FIDInceptionV3()
    # BatchNorm's num_batches_tracked is absent from some conversions and unused in eval: let only it be
    # missing; every other mismatch is an error that names the keys.
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.startswith("AuxLogits.")]
    if missing or unexpected:
        raise ValueError(f"{path}: not the FID Inception state dict ({WEIGHTS_FILE}): missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return net.eval().requires_grad_(False)
