"""The project's digits feature network: trained deterministically, accurate, cached and reused."""

from __future__ import annotations

import json

import torch


def test_classifier_is_accurate_and_cached(distill_cache):
    from distill.evaluation.metrics.digits_features import VERSION, digits_classifier_info, digits_features

    info = digits_classifier_info()  # trains into the session cache if nobody has yet
    assert info["test_accuracy"] > 0.9, info
    weights = distill_cache / f"digits_classifier_v{VERSION}.safetensors"
    stamp = weights.stat().st_mtime_ns
    ext = digits_features()  # second use: read from the cache, not retrained
    assert weights.stat().st_mtime_ns == stamp
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    f = ext(x)
    assert f.shape == (5, 64) and not f.requires_grad
    assert json.loads((distill_cache / f"digits_classifier_v{VERSION}.json").read_text())["version"] == VERSION


def test_corrupt_cache_is_retrained(tmp_path, monkeypatch):
    from distill.evaluation.metrics import digits_features as dfm

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    weights, info = dfm._paths()
    weights.write_bytes(b"not safetensors")
    info.write_text("{}")
    calls = []
    trained = (dfm.DigitsNet(), 0.95)
    monkeypatch.setattr(dfm, "train_digits_classifier", lambda: calls.append(1) or trained)
    dfm.load_digits_classifier()
    assert calls == [1] and json.loads(info.read_text())["test_accuracy"] == 0.95
    dfm.load_digits_classifier()  # now readable: no second training
    assert calls == [1]


def test_features_separate_real_digits_from_noise(distill_cache):
    """The feature space should see structure: FD(real, real') << FD(real, noise)."""
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.metrics.fid import add, distance, frechet_metric
    from teachers.analytic import load_digits_array

    x = torch.from_numpy(load_digits_array()[0]).float()
    metric = frechet_metric(build_extractor("digits", (1, 8, 8)).module)  # as torchmetrics' feature=
    add(metric, x[1::2], real=True)
    same = distance(metric, x[::2])
    other = distance(metric, torch.rand(800, 1, 8, 8) * 2 - 1)
    assert same * 20 < other
