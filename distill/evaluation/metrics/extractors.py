"""Feature extractors for Frechet distances, chosen by name: 'inception', 'digits', 'pixel', 'auto' or
any nn.Module named by a dotted path 'package.module:attr' (an instance, or a class/factory called with
no arguments). Each takes images in [-1, 1] (B, *image_shape) and returns (B, D) float64 features; its
module is what torchmetrics' FrechetInceptionDistance runs as `feature=` (distill/evaluation/metrics/fid.py).

'auto' (DESIGN.md, "Measuring"): Inception when its weights file is given, the project's digits
classifier for 8x8 grey images, raw pixels otherwise.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
from torch import nn

DIGITS_SHAPE = (1, 8, 8)
# Feature-space names (report.json's "features"; recorded with saved statistics): the protocol, not the file.
INCEPTION_TF1 = "inception-v3 pool3 (TF1 bilinear resize)"
INCEPTION_CLEAN = "inception-v3 pool3 (clean-fid, PIL bicubic resize)"


class FeatureModule(nn.Module):
    """`net` with its output flattened to (B, D) in float64 and its width as `num_features` (torchmetrics
    reads it; float64 out keeps torchmetrics' result in float64, it casts FID to the features' dtype)."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, int(num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(1).double()


@dataclass
class Extractor:
    module: FeatureModule
    name: str  # recorded as report.json's "features" and in saved reference statistics

    @property
    def num_features(self) -> int:
        return self.module.num_features

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
        """(N, ...) images on any device -> (N, D) float64 features on the CPU."""
        dev = next(self.module.parameters(), torch.empty(0)).device
        outs = [self.module(images[i:i + batch_size].to(dev)).cpu() for i in range(0, images.shape[0], batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.num_features, dtype=torch.float64)

    def to(self, device) -> Extractor:
        self.module.to(device)
        return self


def resolve_choice(choice: str, image_shape, inception_path: str | None = None) -> str:
    if choice != "auto":
        return choice
    if inception_path:
        return "inception"
    return "digits" if tuple(image_shape) == DIGITS_SHAPE else "pixel"


def _from_dotted_path(spec: str, image_shape) -> FeatureModule:
    mod_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"feature extractor {spec!r}: cannot import it ({err}); use 'package.module:attr'") \
            from None
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise ValueError(f"feature extractor {spec!r} is a {type(obj).__name__}, not an nn.Module")
    obj = obj.eval().requires_grad_(False)
    with torch.no_grad():  # its width, from two blank images (torchmetrics sizes its sums by it)
        dim = obj(torch.zeros(2, *image_shape)).flatten(1).shape[1]
    return FeatureModule(obj, dim)


def build_extractor(choice: str, image_shape, inception_path: str | None = None) -> Extractor:
    """An Extractor for `choice` (see the module docstring). Raises ValueError for an unusable choice and
    InceptionWeightsMissing (a FileNotFoundError) when the Inception file is absent."""
    choice = resolve_choice(choice, image_shape, inception_path)
    if choice == "pixel":
        return Extractor(FeatureModule(nn.Flatten(), math.prod(image_shape)), "pixel")
    if choice == "digits":
        if tuple(image_shape) != DIGITS_SHAPE:
            raise ValueError(f"digits features need 8x8 grey images, the student makes {tuple(image_shape)}")
        from distill.evaluation.metrics.digits_features import FEATURE_DIM, VERSION, digits_features

        return Extractor(FeatureModule(digits_features(), FEATURE_DIM),
                         f"digits-classifier-v{VERSION} penultimate (64-d)")
    if choice == "inception":
        if len(image_shape) != 3 or image_shape[0] not in (1, 3):
            raise ValueError(f"Inception features need images (1 or 3 channels), got {tuple(image_shape)}")
        from distill.evaluation.metrics.inception import TFInceptionFeatures, load_inception

        net = TFInceptionFeatures(load_inception(inception_path))
        return Extractor(FeatureModule(net, net.num_features), INCEPTION_TF1)
    if ":" in choice:
        return Extractor(_from_dotted_path(choice, image_shape), choice)
    raise ValueError(f"unknown feature extractor {choice!r}; choose auto, inception, digits, pixel or "
                     "'package.module:attr'")
