"""`distill export --onnx`: the one-step generator graph equals the PyTorch student (demo size, random weights)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from distill.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def demo_size_export(tmp_path, num_classes: int):
    """student.safetensors + student.json of the demo recipe's student network, random weights."""
    from distill.export import rebuild_student, write_export

    meta = {"schema_version": 1, "recipe": {}, "teacher": {"spec": {"name": "none"}},
            "network": {"name": "small_unet", "in_channels": 1, "width": 32, "channel_mult": [1, 2],
                        "num_blocks": 1, "num_classes": num_classes},
            "feeding": {"name": "edm", "sigma_data": 0.5}, "sigma_min": 0.002, "sigma_max": 80.0,
            "sigma_data": 0.5, "image_shape": [1, 8, 8], "num_classes": num_classes,
            "sampling_sigmas": {"1": [80.0]}, "reference_stats": None}
    torch.manual_seed(num_classes)
    student = rebuild_student(meta)
    for p in student.parameters():  # the UNet zero-initialises its last convs; make every weight count
        p.data.normal_(0, 0.1)
    out = tmp_path / f"export{num_classes}"
    out.mkdir()
    write_export(out, meta, student.net.state_dict(), weights="online")
    return out


@pytest.mark.parametrize("num_classes", [0, 10])
def test_onnx_graph_equals_the_pytorch_student(tmp_path, capsys, num_classes):
    import distill
    from distill.export.onnx import run_session, session

    run = demo_size_export(tmp_path, num_classes)
    out = tmp_path / "g.onnx"
    assert main(["export", str(run), "--onnx", str(out)]) == 0
    assert "max_abs_diff" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnx")] == []  # no staging left behind
    student = distill.load_student(run)
    sess = session(out)
    inputs = {i.name: i for i in sess.get_inputs()}
    assert list(inputs) == (["noise", "labels"] if num_classes else ["noise"])
    assert inputs["noise"].type == "tensor(float)" and inputs["noise"].shape[1:] == [1, 8, 8]
    if num_classes:
        assert inputs["labels"].type == "tensor(int64)"
    for batch in (1, 5):  # the batch axis is dynamic
        g = torch.Generator().manual_seed(batch)
        feeds = {"noise": torch.randn(batch, 1, 8, 8, generator=g)}
        if num_classes:
            feeds["labels"] = torch.randint(0, num_classes, (batch,), generator=g)
        ours = student.from_noise(feeds["noise"], cond=feeds.get("labels"))
        theirs = run_session(sess, feeds)
        assert theirs.shape == (batch, 1, 8, 8) and theirs.min() >= -1 and theirs.max() <= 1
        assert (ours.abs() < 1).float().mean() > 0.5  # mostly unclamped: the comparison is not vacuous
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_missing_onnx_packages_exit_2_naming_pip(tmp_path, capsys, monkeypatch):
    from _editing_runs import fresh_export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["export", str(fresh_export(1, 8)), "--onnx", str(tmp_path / "g.onnx")]) == 2
    assert "pip install onnx onnxscript onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "g.onnx").exists()
    assert main(["bench", "sample", "--size", "tiny"]) == 2
    assert "--no-onnx" in capsys.readouterr().err


def test_export_needs_a_format(capsys):
    from _editing_runs import fresh_export

    assert main(["export", str(fresh_export(1, 8))]) == 2
    assert "--onnx" in capsys.readouterr().err
