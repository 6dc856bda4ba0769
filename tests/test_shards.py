"""`distill shards SRC OUT --shard-size N` from a folder or an EDM zip; the shards read back exactly."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import torch

from distill.cli import main
from distill.data.webdataset_source import ShardSamples, build_loader, expand_urls


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="png")
    return buf.getvalue()


def _read_back(pattern: str):
    ds = ShardSamples(expand_urls(pattern), (3, 4, 4), resampled=False, shuffle_buffer=0, corrupt="strict")
    x, y = zip(*build_loader(ds, 100, 0, 0), strict=True)
    x, y = torch.cat(x), torch.cat(y)
    return torch.round((x[:, 0, 0, 0] + 1) * 127.5).long().tolist(), y.tolist()


def test_shards_from_folder(tmp_path, capsys):
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(5):
            (src / c / f"x.{i}.png").write_bytes(_png(10 * i + (c == "b")))
    out = tmp_path / "deep" / "out"  # ShardWriter does not create folders; the command must
    assert main(["shards", str(src), str(out), "--shard-size", "3"]) == 0
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 4  # ceil(10 / 3)
    assert "shard-{000000..000003}.tar" in capsys.readouterr().out
    values, labels = _read_back(f"{out}/shard-{{000000..000003}}.tar")
    assert values == [0, 10, 20, 30, 40, 1, 11, 21, 31, 41] and labels == [0] * 5 + [1] * 5


def test_shards_from_edm_zip(tmp_path):
    path = tmp_path / "ds.zip"
    with zipfile.ZipFile(path, "w") as zf:
        names = [f"00000/img{i:08d}.png" for i in range(4)]
        for i, n in enumerate(names):
            zf.writestr(n, _png(i))
        zf.writestr("dataset.json", json.dumps({"labels": [[n, i % 2] for i, n in enumerate(names)]}))
    assert main(["shards", str(path), str(tmp_path / "out"), "--shard-size", "10"]) == 0
    values, labels = _read_back(f"{tmp_path}/out/shard-000000.tar")
    assert values == [0, 1, 2, 3] and labels == [0, 1, 0, 1]


def test_shards_bad_input_exits_2(tmp_path):
    assert main(["shards", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert main(["shards", str(tmp_path), str(tmp_path / "out"), "--shard-size", "0"]) == 2
