"""The one-step generator as an ONNX graph, for onnxruntime and the runtimes that read ONNX (on device, browsers).

Graph: `noise` (B, *image_shape) float32 unit Gaussian [+ `labels` (B,) int64 for a class-conditional
student] -> `images` (B, *image_shape) in [-1, 1]: x = f_theta(sigma_max z, sigma_max) clamped (CM Alg. 1
with one step), so it equals `student.from_noise(z, cond=labels)`. The batch axis is dynamic.
Exported with torch's dynamo exporter (torch.export + onnxscript), then checked against PyTorch in
onnxruntime on a seeded batch before the file takes its final name.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

PACKAGES = ("onnx", "onnxscript", "onnxruntime")
PIP = "pip install onnx onnxscript onnxruntime"
TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| on images in [-1, 1]
PROTOBUF_LIMIT = 1.8e9  # bytes of weights above which they go to OUT.onnx.data (protobuf caps a file at 2 GB)


class OnnxUnavailable(ImportError):
    """The packages the export needs are not installed; the message names the pip command."""


def require_onnx() -> None:
    missing = [m for m in PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxUnavailable(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                              f"not installed: run `{PIP}` (or pip install 'distill-cm[onnx]')")


class OneStepGenerator(nn.Module):
    """noise [, labels] -> images in [-1, 1]: the student's single step at sigma_max."""

    def __init__(self, student):
        super().__init__()
        self.student = student
        self.sigma_max = float(student.sigma_max)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.full((noise.shape[0],), self.sigma_max, dtype=noise.dtype, device=noise.device)
        return self.student(noise * self.sigma_max, sigma, labels).clamp(-1, 1)


def example_inputs(student, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feeds = {"noise": torch.randn((batch, *student.image_shape), generator=g)}
    if student.num_classes:
        feeds["labels"] = torch.randint(0, student.num_classes, (batch,), generator=g)
    return feeds


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with `threads` intra-op threads (as torch gets in the benchmarks)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(sess, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.from_numpy(sess.run(["images"], {k: v.numpy() for k, v in feeds.items()})[0])


@torch.no_grad()
def max_difference(sess, generator: nn.Module, student, batch: int = 3) -> float:
    feeds = example_inputs(student, batch, seed=1)
    return float((run_session(sess, feeds) - generator(*feeds.values())).abs().max())


def _export_graph(generator: OneStepGenerator, student, path: Path) -> None:
    feeds = example_inputs(student, 2)  # batch 2: a batch of 1 would be specialised away
    batch = torch.export.Dim("batch", min=1)
    weights = sum(p.numel() * p.element_size() for p in student.parameters())
    with warnings.catch_warnings():
        # noise and labels share the one batch axis, which torch 2.14's exporter reports as a naming clash.
        warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used", category=UserWarning)
        torch.onnx.export(generator, tuple(feeds.values()), str(path), input_names=list(feeds),
                          output_names=["images"], dynamic_shapes={name: {0: batch} for name in feeds},
                          dynamo=True, external_data=weights > PROTOBUF_LIMIT, verbose=False)


def export_onnx(student, out: str | Path) -> dict:
    """Write the generator graph to `out` (checked in onnxruntime first); {"path", "max_abs_diff", ...}."""
    require_onnx()
    out = Path(out)
    student = copy.deepcopy(student).to("cpu").float().eval()  # the caller's student stays where it is
    generator = OneStepGenerator(student).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name  # the same name: an external-data file is referenced by it
        try:
            _export_graph(generator, student, staged)
        except Exception as err:  # noqa: BLE001 - torch.export/onnxscript raise many types; say which network
            name = getattr(student.net, "build_spec", {}).get("name", type(student.net).__name__)
            raise RuntimeError(f"torch could not export this student's network ({name}) to ONNX: "
                               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        diff = max_difference(session(staged), generator, student)
        if not diff <= TOLERANCE:
            raise RuntimeError(f"the exported graph differs from PyTorch by {diff:.3g} (> {TOLERANCE:g}); "
                               "not written. Please report the network this student uses.")
        for f in Path(tmp).iterdir():  # OUT.onnx (+ OUT.onnx.data for students over ~1.8 GB)
            os.replace(f, out.parent / f.name)
    return {"path": str(out), "max_abs_diff": diff, "inputs": ["noise"] + (["labels"] if student.num_classes else []),
            "image_shape": list(student.image_shape), "sigma": float(student.sigma_max)}
