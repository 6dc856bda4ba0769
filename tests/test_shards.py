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


def _folder(tmp_path, n=2):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    for i in range(n):
        (src / f"{i}.png").write_bytes(_png(i))
    return src.parent


def test_links_out_of_the_source_are_refused_before_anything_is_written(tmp_path, capsys):
    src = _folder(tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET: not an image, not in SRC")
    (src / "a" / "2.png").symlink_to(secret)
    out = tmp_path / "out"
    assert main(["shards", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "2.png" in err and "outside" in err
    assert not out.exists()
    (src / "a" / "2.png").unlink()
    (src / "a" / "3.png").symlink_to(src / "a" / "0.png")  # a link that stays inside SRC is read
    assert main(["shards", str(src), str(out)]) == 0
    assert _read_back(f"{out}/shard-000000.tar")[0] == [0, 1, 0]


def test_files_over_the_size_limit_are_refused_unread(tmp_path, capsys):
    src = _folder(tmp_path)
    with open(src / "a" / "huge.png", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: it would be read whole and copied into a shard
    out = tmp_path / "out"
    assert main(["shards", str(src), str(out)]) == 2
    assert "huge.png" in capsys.readouterr().err and not out.exists()
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("00000/img0.png", _png(0))
        zf.writestr("00000/img1.png", bytes(3 << 20))  # 3 MiB inflated from a few KiB
    assert main(["shards", str(zpath), str(out), "--max-member-mb", "1"]) == 2
    assert "img1.png" in capsys.readouterr().err and not out.exists()


def test_prefixes_that_leave_out_are_refused(tmp_path):
    src = _folder(tmp_path)
    out = tmp_path / "a" / "b" / "out"
    for prefix in ("../../x", "/tmp/x", "sub/x", "..", ".hidden", "", "x%s"):
        assert main(["shards", str(src), str(out), "--prefix", prefix]) == 2, prefix
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("x-*.tar"))
    assert main(["shards", str(src), str(out), "--prefix", "train_v1.2"]) == 0
    assert [p.name for p in out.iterdir()] == ["train_v1.2-000000.tar"]
