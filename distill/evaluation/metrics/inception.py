"""The Inception-v3 behind FID (Heusel et al. 2017): torch-fidelity's network, the one torchmetrics'
FrechetInceptionDistance uses, with its weights read weights-only from a local file.

Weights: torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`, the TF1 2015-12-05 graph as a plain
state dict (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` uses the same tensor names and loads too).
torch-fidelity itself unpickles that file with `weights_only=False`, or downloads it when given no path; here
neither happens: the file is read with `torch.load(weights_only=True)` and torch-fidelity receives an
in-memory copy of those tensors (bytes this process wrote, so its unpickling runs nothing from the file).

One network, two input protocols (docs/evaluation.md):
- `TFInceptionFeatures`, images in [-1, 1]: quantised to uint8 (as saved to PNG), then torch-fidelity's
  TF1 bilinear resize to 299 (no half-pixel offset): the protocol behind the EDM and consistency-models
  papers' tables.
- `CleanInceptionFeatures`, clean-fid's batches: clean-fid has already resized them to 299 with PIL's
  bicubic filter (its "clean" mode, Parmar et al. 2022) and kept them as floats in [0, 255].
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
SIZE = 299


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights file is not on disk. Nothing is ever downloaded on the user's behalf."""


def default_weights_path() -> Path:
    """$DISTILL_CACHE/<file> when set, else where torch-fidelity and torchmetrics cache it (torch hub)."""
    if os.environ.get("DISTILL_CACHE"):
        return Path(os.environ["DISTILL_CACHE"]) / WEIGHTS_FILE
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def load_inception(path: str | os.PathLike | None = None) -> nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 (pool3 features, eval mode) with the weights in `path`
    (default: `default_weights_path()`). InceptionWeightsMissing when absent; ValueError when it is not
    this network's state dict."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path) if path else default_weights_path()
    if not path.is_file():
        raise InceptionWeightsMissing(
            f"Inception weights not found at {path}. FID with Inception features needs the plain state dict "
            f"{WEIGHTS_FILE} (torch-fidelity's; pytorch-fid's pt_inception-2015-12-05-6726825d.pth also "
            f"loads); download it yourself from {WEIGHTS_URL} and pass its path (--inception FILE or "
            "eval.inception_path), or use digits/pixel features.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything unreadable or holding objects: refuse, naming the file
        raise ValueError(f"{path}: not a plain state dict readable with weights_only=True ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a plain state dict of tensors (the FID Inception {WEIGHTS_FILE})")
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buf)
    except RuntimeError as err:  # load_state_dict(strict=True): wrong or missing names and shapes
        raise ValueError(f"{path}: not the FID Inception state dict ({WEIGHTS_FILE}): {str(err)[:300]}") from None
    return net.eval().requires_grad_(False)


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] -> uint8 RGB, rounded as a PNG writer rounds; grey -> three channels."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class TFInceptionFeatures(nn.Module):
    """Images in [-1, 1] -> (B, 2048) pool3 features by the TF1 protocol (torch-fidelity's own forward)."""

    num_features = 2048

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_uint8_rgb(images))[0]


class CleanInceptionFeatures(nn.Module):
    """clean-fid's batches ((B, 3, 299, 299) floats in [0, 255], already resized) -> (B, 2048) pool3.

    torch-fidelity's forward starts with its own uint8 check and TF1 resize; clean-fid's input is past both,
    so this runs the network's stages (its children, in order, up to the classifier) after the same
    (x - 128) / 128 scaling.
    """

    num_features = 2048

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"expected clean-fid batches of shape (B, 3, {SIZE}, {SIZE}), got {tuple(x.shape)}")
        x = (x.float() - 128) / 128
        for name, stage in self.net.named_children():
            if name == "fc":
                break
            x = stage(x)
        return x.flatten(1)
