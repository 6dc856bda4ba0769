"""A small digits classifier whose penultimate layer is the feature space for FID on 8x8 digits.

Inception features mean nothing on 8x8 grey images, and pixel space weighs every pixel alike; a classifier
trained on the same data set gives features that respond to what makes a digit a digit (the role
Inception plays for natural images). It is trained by the project, deterministically, on scikit-learn's
digits (a fixed 80/20 split), in a few seconds on a CPU, and cached as safetensors under
$DISTILL_CACHE or ~/.cache/distill; a missing or stale cache is retrained. Its held-out accuracy is stored
with the weights (`digits_classifier_info()`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from teachers.files import atomic_write_bytes

# Bump when the network or the training recipe changes: the cache file name carries it.
VERSION = 1
FEATURE_DIM = 64
SPLIT_SEED, TRAIN_SEED = 1234, 0
EPOCHS, BATCH, LR = 20, 64, 3e-3


class DigitsNet(nn.Module):
    """(B, 1, 8, 8) in [-1, 1] -> logits (B, 10); `features` gives the (B, 64) penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)  # 8x8 -> 4x4
        self.fc1 = nn.Linear(64 * 16, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv2(F.silu(self.conv1(x.float().reshape(-1, 1, 8, 8)))))
        return F.silu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


class DigitsFeatures(nn.Module):
    """The feature extractor: images -> (B, 64) penultimate activations of the trained classifier."""

    feature_dim = FEATURE_DIM

    def __init__(self, net: DigitsNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def forward(self, images):
        return self.net.features(images)


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE") or Path.home() / ".cache" / "distill")


def _split():
    from teachers.analytic import load_digits_array

    images, labels = load_digits_array()
    x, y = torch.from_numpy(images).float(), torch.from_numpy(labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = int(0.8 * len(x))
    return (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])


def accuracy(net: nn.Module, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def train_digits_classifier() -> tuple[DigitsNet, float]:
    """Deterministic for a given torch build: fixed split, fixed init seed, fixed batch order, one thread
    (the net is tiny: more threads only add contention, and reduction order would depend on them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train()
    finally:
        torch.set_num_threads(threads)


def _train() -> tuple[DigitsNet, float]:
    (xtr, ytr), (xte, yte) = _split()
    with torch.random.fork_rng():
        torch.manual_seed(TRAIN_SEED)
        net = DigitsNet()
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * -(-len(xtr) // BATCH))
    net.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net, accuracy(net, xte, yte)


def _paths() -> tuple[Path, Path]:
    base = cache_dir() / f"digits_classifier_v{VERSION}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def load_digits_classifier(retrain: bool = False) -> DigitsNet:
    """The cached classifier, trained (and cached) first when the cache is missing or unreadable."""
    from safetensors.torch import load_file, save

    weights, info = _paths()
    if not retrain and weights.is_file() and info.is_file():
        try:
            net = DigitsNet()
            net.load_state_dict(load_file(str(weights)))
            return net.eval()
        except Exception:  # noqa: BLE001 - a corrupt cache is simply rebuilt
            pass
    net, acc = train_digits_classifier()
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    atomic_write_bytes(info, json.dumps({"version": VERSION, "test_accuracy": acc, "torch": torch.__version__,
                                    "split": "80/20 of sklearn digits, seed 1234"}, indent=2).encode())
    return net


def digits_classifier_info() -> dict:
    """{"test_accuracy": ..., ...} of the cached classifier (training it first if needed)."""
    load_digits_classifier()
    return json.loads(_paths()[1].read_text())


def digits_features() -> DigitsFeatures:
    return DigitsFeatures(load_digits_classifier())
