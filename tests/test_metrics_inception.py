"""torch-fidelity's Inception, loaded weights-only from a local file (random weights here, conftest's
`inception_file`: nothing is downloaded): the state-dict layout, the TF1 and clean-fid input paths,
torchmetrics' FID running on it, a clear error when the file is missing, a hostile pickle refused unrun."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.metrics.inception import (
    WEIGHTS_FILE,
    CleanInceptionFeatures,
    InceptionWeightsMissing,
    TFInceptionFeatures,
    load_inception,
)


@pytest.fixture(scope="module")
def extractor(inception_file):
    from distill.evaluation.metrics.extractors import build_extractor

    return build_extractor("auto", (3, 16, 16), str(inception_file))  # auto picks Inception given the file


@pytest.fixture(scope="module")
def net(extractor):
    return extractor.module.net.net  # FeatureModule(TFInceptionFeatures(torch-fidelity's network))


def test_loads_weights_only_into_torch_fidelitys_network(net, inception_file):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    assert isinstance(net, FeatureExtractorInceptionV3) and not net.training
    state = torch.load(inception_file, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items() if k in state)
    assert set(state) <= set(net.state_dict())


def test_tf1_path_quantises_and_gives_2048_features(net):
    tf = TFInceptionFeatures(net)
    levels = torch.randint(0, 256, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    grey = levels / 127.5 - 1  # exact grey levels: a PNG's values
    with torch.no_grad():
        f = tf(grey)
        assert torch.equal(f, tf(grey.expand(-1, 3, -1, -1)))  # grey = three equal channels
        assert torch.equal(f, tf(grey + 0.001))  # below half a grey level: the same uint8 image
        u8 = levels.to(torch.uint8).expand(-1, 3, -1, -1)
        assert torch.equal(f, net(u8)[0])  # torch-fidelity's own forward (its TF1 resize) on the PNG values
    assert f.shape == (1, 2048) and torch.isfinite(f).all() and (f >= 0).all() and f.std() > 0


def test_clean_path_is_the_same_network_after_the_resize(net):
    """At 299x299 the TF1 resize is the identity, so clean-fid's path (the stages run in order from
    (x - 128) / 128) must equal torch-fidelity's forward on the same pixels."""
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(CleanInceptionFeatures(net)(x.float()), net(x)[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="299"):
        CleanInceptionFeatures(net)(torch.zeros(1, 3, 32, 32))


def test_torchmetrics_fid_runs_on_it(extractor, inception_file):
    """The extractor by name, as torchmetrics' `feature=`: FID of two small image sets is finite, and
    a set against itself is ~0."""
    from distill.evaluation.metrics.extractors import INCEPTION_TF1, build_extractor
    from distill.evaluation.metrics.fid import add, distance, frechet_metric

    assert extractor.name == INCEPTION_TF1 and extractor.num_features == 2048
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.rand(3, 3, 16, 16, generator=g) * 0.5
    metric = frechet_metric(extractor.module)
    add(metric, a, real=True)
    assert distance(metric, a) == pytest.approx(0, abs=1e-3)
    assert distance(metric, b) > 1e-2
    with pytest.raises(ValueError, match="need images"):
        build_extractor("inception", (2,), str(inception_file))


def test_missing_file_names_the_expected_file(tmp_path):
    with pytest.raises(InceptionWeightsMissing) as err:
        load_inception(tmp_path / "nope.pth")
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and "nope.pth" in msg and "download it yourself" in msg
    assert isinstance(err.value, FileNotFoundError)  # the CLI turns it into exit code 2


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def test_wrong_or_hostile_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        load_inception(path)
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, path)  # torch-fidelity alone would unpickle this
    with pytest.raises(ValueError, match="weights_only"):
        load_inception(path)
    assert not (tmp_path / "PWNED").exists()
