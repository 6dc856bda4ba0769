"""Feature extractors for Frechet distances, chosen by name: 'inception', 'digits', 'pixel', 'auto' or
any nn.Module named by a dotted path 'package.module:attr' (an instance, or a class/factory called with
no arguments). Each takes images in [-1, 1] (B, *image_shape) and returns (B, D) features.

'auto' (DESIGN.md, "Measuring"): Inception when its weights file is given, the project's digits
classifier for 8x8 grey images, raw pixels otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

DIGITS_SHAPE = (1, 8, 8)


class PixelFeatures(nn.Module):
    def forward(self, images):
        return images.flatten(1)


@dataclass
class Extractor:
    module: nn.Module
    name: str  # recorded as report.json's "features" and in saved reference statistics

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
        """(N, ...) images on any device -> (N, D) float64 features on the CPU."""
        dev = next(self.module.parameters(), torch.empty(0)).device
        outs = [self.module(images[i:i + batch_size].to(dev, torch.float32)).double().cpu()
                for i in range(0, images.shape[0], batch_size)]
        return torch.cat(outs)

    def to(self, device) -> Extractor:
        self.module.to(device)
        return self


def resolve_choice(choice: str, image_shape, inception_path: str | None = None) -> str:
    if choice != "auto":
        return choice
    if inception_path:
        return "inception"
    return "digits" if tuple(image_shape) == DIGITS_SHAPE else "pixel"


def _from_dotted_path(spec: str) -> nn.Module:
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
    return obj.eval().requires_grad_(False)


def build_extractor(choice: str, image_shape, inception_path: str | None = None) -> Extractor:
    """An Extractor for `choice` (see the module docstring). Raises ValueError for an unusable choice and
    InceptionWeightsMissing (a FileNotFoundError) when the Inception file is absent."""
    choice = resolve_choice(choice, image_shape, inception_path)
    if choice == "pixel":
        return Extractor(PixelFeatures(), "pixel")
    if choice == "digits":
        if tuple(image_shape) != DIGITS_SHAPE:
            raise ValueError(f"digits features need 8x8 grey images, the student makes {tuple(image_shape)}")
        from distill.evaluation.metrics.digits_features import VERSION, digits_features

        return Extractor(digits_features(), f"digits-classifier-v{VERSION} penultimate (64-d)")
    if choice == "inception":
        if len(image_shape) != 3 or image_shape[0] not in (1, 3):
            raise ValueError(f"Inception features need images (1 or 3 channels), got {tuple(image_shape)}")
        from distill.evaluation.metrics.inception import WEIGHTS_FILE, load_inception

        return Extractor(load_inception(inception_path), f"inception-v3 pool3 ({WEIGHTS_FILE}, TF1 resize)")
    if ":" in choice:
        return Extractor(_from_dotted_path(choice), choice)
    raise ValueError(f"unknown feature extractor {choice!r}; choose auto, inception, digits, pixel or "
                     "'package.module:attr'")
