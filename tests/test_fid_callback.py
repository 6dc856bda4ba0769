"""FID during training: fid_1step/fid_2step in metrics.csv, a best-by-FID checkpoint, the EMA weights
evaluated, and a sharded evaluation (each rank its share of the samples and of the reference, torchmetrics'
float64 sums gathered through the strategy) that equals the single-process number."""

from __future__ import annotations

import csv
import math
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def fid_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("fid_1step")]


def test_fid_is_logged_and_best_checkpoint_written(tiny_run):
    rows = fid_rows(tiny_run)
    assert [int(float(r["step"])) for r in rows] == [2, 4]
    for r in rows:
        assert math.isfinite(float(r["fid_1step"])) and math.isfinite(float(r["fid_2step"]))
    best = tiny_run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # a plain, resumable checkpoint
    state = ckpt["callbacks"]["FIDCallback"]
    assert state["best"] == pytest.approx(min(float(r["fid_1step"]) for r in rows))
    assert [h["step"] for h in state["history"]] == [2, 4][:len(state["history"])]


def test_logged_fid_is_the_exported_ema_students_fid(tiny_run):
    """The last logged value is report.json's: recomputed offline from the export (which holds the EMA weights), with
    scipy's sqrtm formula on the same digits features (an implementation independent of torchmetrics)."""
    from _frechet_reference import scipy_fd

    import teachers
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.metrics.reference import exact_samples
    from distill.export import load_student
    from distill.sampling import consistency_sample, default_sigmas, per_sample_noise

    student = load_student(tiny_run)
    assert student.meta["weights"].startswith("ema_")
    ext = build_extractor("auto", student.image_shape)
    ref = ext(exact_samples(teachers.load(student.meta["teacher"]["spec"]), 1000, 0))
    last = fid_rows(tiny_run)[-1]
    for k in (1, 2):  # raw outputs from per-sample noises, as `distill eval` (evaluation/evaluate.py) scores them
        x = consistency_sample(student, per_sample_noise(range(64), student.image_shape, k), default_sigmas(student, k))
        assert scipy_fd(ext(x.float()), ref) == pytest.approx(float(last[f"fid_{k}step"]), rel=1e-6)


class ThreadGather:
    """all_gather between ranks running in threads: what DDP's all_gather does across processes
    (Lightning's strategy.all_gather stacks the ranks' tensors)."""

    def __init__(self, world: int):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def strategy(self, rank: int):
        def all_gather(t, group=None, sync_grads=False):
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = torch.stack(self.slots)
            self.barrier.wait()
            return out

        return SimpleNamespace(all_gather=all_gather, barrier=lambda *a: None)


def test_sharded_evaluation_equals_single_process(tiny_run):
    import teachers
    from distill.export import load_student
    from distill.training.callbacks.fid import FIDCallback

    student = load_student(tiny_run)
    module = SimpleNamespace(student=student, device=torch.device("cpu"), teacher=teachers.load({"name": "digits"}),
                             cfg=SimpleNamespace(student=SimpleNamespace(sigmas_2=[80.0, 2.0],
                                                                         sigmas_3=[80.0, 5.0, 0.8])))

    def run(world):
        comm, results = ThreadGather(world), [None] * world

        def rank_job(rank):
            # pixel features: float64-exact (no float32 network whose bits depend on the batch);
            # the reference: 200 exact samples, each rank adding its share in batches of 1.
            cb = FIDCallback(tiny_run, steps=(1, 2, 3), num=37, seed=5, batch_size=1, features="pixel", ref_num=200)
            trainer = SimpleNamespace(world_size=world, global_rank=rank, callbacks=[],
                                      strategy=comm.strategy(rank))
            cb._prepare(trainer, module)
            results[rank] = cb.compute(trainer, module)

        threads = [threading.Thread(target=rank_job, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return results

    # batch_size=1 and pixel features leave the sharding and the sums as the only differences. The sums are
    # added in another order, so FID agrees to float64 rounding amplified by the eigen-solve (~1e-9 relative
    # seen); one sample lost or counted twice out of 37 moves it by ~1e-2.
    single = run(1)[0]
    for world in (2, 3):
        for ranks in run(world):
            assert ranks.keys() == single.keys()
            for k, v in single.items():
                assert ranks[k] == pytest.approx(v, rel=1e-7), (world, k)


@pytest.mark.slow
def test_ddp_two_processes_log_the_single_process_fid(tmp_path, run_cli, distill_cache):
    """A real 2-process CPU DDP run (gloo) against one process. optim.lr=0 keeps both students at the
    same initial weights, so only the evaluation's sharding and all-reduce could make them differ."""
    common = ["optim.lr=0", "trainer.max_steps=2", "trainer.accelerator=cpu", "eval.every_n_steps=2",
              "eval.num=50", "data.batch_size=8", "trainer.enable_progress_bar=false",
              "student.network={name: small_unet, width: 8, channel_mult: [1, 2], num_blocks: 1}"]
    env = {"DISTILL_CACHE": str(distill_cache), "OMP_NUM_THREADS": "1"}
    run_cli("fit", ROOT / "recipes" / "demo.yaml", f"run.dir={tmp_path / 'one'}", *common, check=True, env=env)
    run_cli("fit", ROOT / "recipes" / "demo.yaml", f"run.dir={tmp_path / 'ddp'}", "trainer.devices=2",
            "trainer.strategy=ddp", "data.batch_size=4", *common, check=True, env=env)
    one, ddp = fid_rows(tmp_path / "one")[-1], fid_rows(tmp_path / "ddp")[-1]
    for key in ("fid_1step", "fid_2step"):
        # rel 1e-6, not 1e-12: float32 networks see other batch compositions on two ranks.
        assert float(ddp[key]) == pytest.approx(float(one[key]), rel=1e-6), (key, sys.platform)
