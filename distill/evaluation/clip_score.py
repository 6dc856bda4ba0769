"""CLIP score (Hessel et al. 2021) through torchmetrics' CLIPScore, from a local CLIP folder only.

`clip_path` is a folder that `transformers.CLIPModel.save_pretrained` + `CLIPProcessor.save_pretrained` wrote
(e.g. openai/clip-vit-large-patch14 copied to disk): loaded with `local_files_only=True` and safetensors only,
so nothing is downloaded and no pickle is read. Score = 100 max(cos(image, text), 0), averaged.
"""

from __future__ import annotations

from pathlib import Path

import torch


class ProjectedFeatures(torch.nn.Module):
    """A CLIPModel whose get_*_features return the projected embedding tensor: transformers 5 returns an output
    object there, which torchmetrics 1.9's CLIPScore cannot use (it calls .norm on the result)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs):
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(clip_path: str | Path):
    """(CLIP model, CLIPProcessor) from a local folder; FileNotFoundError naming what is missing."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(clip_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--clip {path}: not a CLIP model folder (no config.json); save one with "
                                "CLIPModel.save_pretrained + CLIPProcessor.save_pretrained")
    model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    return ProjectedFeatures(model), CLIPProcessor.from_pretrained(path, local_files_only=True)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (DESIGN.md, "Images") -> 0..255 bytes, as CLIP's processor expects."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def clip_score(images: torch.Tensor, captions: list[str], clip, batch_size: int = 64) -> float:
    """Mean CLIP score of (N, 3, H, W) images in [-1, 1] against their captions; `clip` from load_clip."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: clip)
    for i in range(0, images.shape[0], batch_size):
        metric.update(list(to_uint8(images[i:i + batch_size]).cpu()), list(captions[i:i + batch_size]))
    return float(metric.compute())
