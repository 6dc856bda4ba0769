"""webdataset shards: exact-once epochs across ranks x workers, equal batch counts when resampled, and the
corrupt-sample policy (skip counts and logs; strict fails naming the shard)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.webdataset_source import CorruptSampleError, ShardSamples, build_loader, expand_urls

SHAPE = (3, 4, 4)
NUM_SHARDS, PER_SHARD = 8, 5


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="png")
    return buf.getvalue()


def _write(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


@pytest.fixture
def shards(tmp_path):
    """8 shards x 5 samples; sample i has pixel value i and class i % 3."""
    for s in range(NUM_SHARDS):
        _write(tmp_path / f"train-{s:02d}.tar",
               [{"__key__": f"{i:04d}", "png": _png(i), "cls": str(i % 3).encode()}
                for i in range(s * PER_SHARD, (s + 1) * PER_SHARD)])
    return tmp_path


def _ids(x: torch.Tensor) -> list[int]:
    return torch.round((x[:, 0, 0, 0] + 1) * 127.5).long().tolist()


@pytest.fixture
def restore_env():
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    yield
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_brace_pattern_and_pipe_urls(shards):
    assert len(expand_urls(f"{shards}/train-{{00..07}}.tar")) == NUM_SHARDS
    urls = expand_urls(f"pipe:cat {shards}/train-{{00..01}}.tar::{shards}/train-02.tar")
    assert urls[0] == f"pipe:cat {shards}/train-00.tar" and len(urls) == 3
    ds = ShardSamples(urls, SHAPE, resampled=False, shuffle_buffer=0)
    seen = [i for x, _ in build_loader(ds, 4, 0, 0) for i in _ids(x)]
    assert sorted(seen) == list(range(3 * PER_SHARD))


def test_two_ranks_two_workers_see_every_sample_once(shards, restore_env):
    urls = expand_urls(f"{shards}/train-{{00..07}}.tar")
    seen, labels_ok = [], True
    for rank in range(2):
        ds = ShardSamples(urls, SHAPE, rank=rank, world_size=2, resampled=False, shuffle_buffer=8, seed=3)
        loader = build_loader(ds, 3, num_workers=2, epoch_batches=0)
        # Exported before the workers start, for webdataset's own helpers (FACTS.md).
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == (str(rank), "2")
        for x, y in loader:
            ids = _ids(x)
            seen += ids
            labels_ok &= y.tolist() == [i % 3 for i in ids]
    assert sorted(seen) == list(range(NUM_SHARDS * PER_SHARD)), "each sample exactly once per epoch"
    assert labels_ok


def test_resampled_ranks_get_the_same_number_of_batches(shards, restore_env):
    # Uneven on purpose: 3 shards cannot be split evenly over 2 ranks x 2 workers.
    urls = expand_urls(f"{shards}/train-{{00..02}}.tar")
    counts = []
    for rank in range(2):
        ds = ShardSamples(urls, SHAPE, rank=rank, world_size=2, resampled=True, shuffle_buffer=4, seed=1)
        loader = build_loader(ds, 4, num_workers=2, epoch_batches=7)
        epochs = [[tuple(_ids(x)) for x, _ in loader] for _ in range(2)]
        counts += [len(e) for e in epochs]
        assert all(len(b) == 4 for e in epochs for b in e)
        assert epochs[0] != epochs[1], "each epoch draws a fresh stream"
    assert counts == [7, 7, 7, 7]


def _corrupt_shards(shards: Path) -> list[str]:
    good = shards / "train-01.tar"
    truncated = shards / "train-truncated.tar"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    bad_image = shards / "train-badimage.tar"
    _write(bad_image, [{"__key__": "ok", "png": _png(200), "cls": b"0"},
                       {"__key__": "garbage", "png": b"this is not a png", "cls": b"0"}])
    return [str(shards / "train-00.tar"), str(truncated), str(bad_image)]


def test_skip_counts_and_logs_truncated_shard_and_bad_image(shards, caplog):
    urls = _corrupt_shards(shards)
    ds = ShardSamples(urls, SHAPE, resampled=False, shuffle_buffer=0, corrupt="skip")
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        ids = [i for x, _ in build_loader(ds, 4, 0, 0) for i in _ids(x)]
    assert ids[:PER_SHARD] == list(range(PER_SHARD)) and 200 in ids
    assert ds.skipped["shards"] == 1, ds.skipped  # the truncated tar, found by its missing end blocks
    assert ds.skipped["samples"] >= 1  # the undecodable png (plus the half sample cut by truncation)
    text = caplog.text
    assert "train-truncated.tar" in text and "truncated" in text
    assert "train-badimage.tar" in text and "'garbage'" in text


@pytest.mark.parametrize("which", [1, 2])
def test_strict_fails_naming_the_shard(shards, which):
    urls = _corrupt_shards(shards)
    ds = ShardSamples([urls[0], urls[which]], SHAPE, resampled=False, shuffle_buffer=0, corrupt="strict")
    with pytest.raises(CorruptSampleError, match=Path(urls[which]).name):
        for _ in build_loader(ds, 4, 0, 0):
            pass


def test_strict_error_crosses_worker_processes(shards):
    urls = _corrupt_shards(shards)
    ds = ShardSamples(urls[2:], SHAPE, resampled=False, shuffle_buffer=0, corrupt="strict")
    with pytest.raises(Exception, match="train-badimage.tar"):
        for _ in build_loader(ds, 4, 1, 0):
            pass


def test_xflip_mirrors_about_half(tmp_path):
    from PIL import Image

    img = np.zeros((4, 4, 3), np.uint8)
    img[:, 0] = 255  # a bright left column
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png")
    _write(tmp_path / "a.tar", [{"__key__": f"{i:03d}", "png": buf.getvalue()} for i in range(64)])
    ds = ShardSamples([str(tmp_path / "a.tar")], SHAPE, resampled=False, shuffle_buffer=0, xflip=True)
    x = torch.cat([b for b, _ in build_loader(ds, 16, 0, 0)])
    flipped = (x[:, 0, 0, -1] > 0).float().mean().item()
    assert 0.25 < flipped < 0.75


def test_fit_trains_from_shards(tmp_path):
    """data.name=webdataset end to end: 8x8 grey shards for the digits teacher, 3 steps, one worker."""
    from distill.config import resolve
    from distill.training.fit import fit

    rng = np.random.default_rng(0)
    for s in range(2):
        _write(tmp_path / f"d-{s}.tar", [{"__key__": f"{s}{i:03d}", "png": _grey(rng)} for i in range(20)])
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    cfg = resolve(recipe, [f"run.dir={tmp_path / 'run'}", "data.name=webdataset",
                           f"data.path={tmp_path}/d-{{0..1}}.tar", "data.num_workers=1", "data.batch_size=8",
                           "data.epoch_batches=2", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                           "eval.fid=false", "checkpoint.every_n_steps=0", "ema.rates=[]",
                           "student.network={name: small_unet, width: 8, channel_mult: [1], num_blocks: 1}"])
    fit(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3  # 2 epochs of 2 batches were drawn; the third step crossed one
    assert (tmp_path / "run" / "student.safetensors").is_file()


def _grey(rng) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, format="png")
    return buf.getvalue()


def _all_bad(path: Path, n: int = 50) -> str:
    _write(path, [{"__key__": f"{i:04d}", "png": b"not a png", "cls": b"0"} for i in range(n)])
    return str(path)


@pytest.mark.parametrize("workers", [0, 1])
def test_all_bad_shards_fail_naming_them_with_few_log_lines(tmp_path, caplog, workers):
    """Skip mode on shards with no good sample: resampling used to draw them forever, one warning per sample.
    Now the loader gives up once every shard has been read without a good sample, naming the shards."""
    urls = [_all_bad(tmp_path / f"bad-{i}.tar") for i in range(3)]
    ds = ShardSamples(urls, SHAPE, resampled=True, shuffle_buffer=10, corrupt="skip")
    with caplog.at_level(logging.WARNING, logger="distill.data"), \
            pytest.raises(CorruptSampleError, match="no usable sample") as err:
        next(iter(build_loader(ds, 4, workers, 100)))
    assert all(Path(u).name in str(err.value) for u in urls)
    if workers == 0:  # the worker's log lines do not reach caplog
        lines = [r for r in caplog.records if r.levelno == logging.WARNING]
        skipped = ds.skipped["samples"]
        assert skipped >= 150 and len(lines) < 5 + len(str(skipped)) + 1, (skipped, len(lines))
        assert "'0000'" in caplog.text and "summarised" in caplog.text


def test_a_good_shard_among_bad_ones_keeps_training(tmp_path, shards):
    """The give-up rule needs every shard dead since the last good sample: one good shard is enough."""
    urls = [_all_bad(tmp_path / f"bad-{i}.tar") for i in range(4)] + [str(shards / "train-00.tar")]
    ds = ShardSamples(urls, SHAPE, resampled=True, shuffle_buffer=10, corrupt="skip", seed=2)
    batches = [x for x, _ in build_loader(ds, 4, 0, 30)]
    assert len(batches) == 30 and set(i for x in batches for i in _ids(x)) <= set(range(PER_SHARD))


def test_one_pass_without_any_good_sample_raises(tmp_path):
    ds = ShardSamples([_all_bad(tmp_path / "bad.tar")], SHAPE, resampled=False, shuffle_buffer=0)
    with pytest.raises(CorruptSampleError, match="bad.tar"):
        list(build_loader(ds, 4, 0, 0))


def test_fit_on_shards_without_a_good_sample_exits_2_before_creating_anything(tmp_path, capsys):
    from distill.cli import main
    from distill.commands.fit import worker_message

    bad = _all_bad(tmp_path / "bad.tar")
    for dry in ([], ["--dry-run"]):
        code = main(["fit", str(Path(__file__).parents[1] / "recipes" / "demo.yaml"), f"run.dir={tmp_path / 'run'}",
                     "data.name=webdataset", f"data.path={bad}", *dry])
        err = capsys.readouterr().err
        assert code == 2 and "no usable sample" in err and "bad.tar" in err, err
        assert not (tmp_path / "run").exists()
    # The same error raised in a DataLoader worker comes back with the worker's traceback in its text.
    wrapped = CorruptSampleError("Caught CorruptSampleError in DataLoader worker process 0.\nOriginal Traceback "
                                 "(most recent call last):\n  File ...\ndistill.data.corrupt.CorruptSampleError: "
                                 "no usable sample in any of the 1 shards (bad.tar)")
    assert worker_message(wrapped) == "no usable sample in any of the 1 shards (bad.tar)"
