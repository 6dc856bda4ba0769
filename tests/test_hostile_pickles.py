"""Hostile NVlabs-style pickles: none can change the loader, make it walk forever, or escape as a raw exception.

What tests/test_safe_pickle.py proves (no code runs) is not enough: a pickle that runs nothing can still set
attributes on the allowed stand-ins (BUILD), hide an exponential tree in shared references, loop, nest past
the recursion limit, or describe a tensor bigger than its storage. Each is refused with RefusedPickleError
(exit 2 in `distill`), and a valid file loads afterwards in the same process.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from nvlabs_pickle import edm_pickle_bytes
from pickle_ops import Ops, TensorRecord, build_on_global, item, record, tensor_record_pickle

import teachers
from teachers.registry import TeacherSpecError
from teachers.safe_pickle import ALLOWED, RefusedPickleError, collect_tensors, plain, safe_load

PRECOND = dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
               sigma_data=0.5, model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1,
               attn_resolutions=[4], dropout=0.0)


def tiny_net():
    from teachers.networks import build_network

    torch.manual_seed(0)
    kw = {k: v for k, v in PRECOND.items() if k not in ("img_channels", "label_dim", "use_fp16", "sigma_min",
                                                        "sigma_max", "sigma_data", "model_type")}
    return build_network("song_unet", in_channels=3, out_channels=3, **kw).eval()


def probe(teacher):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return teacher.denoise(x, torch.tensor([0.5, 20.0]))


def write(tmp_path, blob: bytes, name="net.pkl"):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def load_edm(path):
    return teachers.load({"name": "edm", "path": str(path)})


def test_build_on_an_allowed_global_is_refused_and_changes_nothing(tmp_path):
    net = tiny_net()
    good = write(tmp_path, edm_pickle_bytes(net, PRECOND))
    expected = probe(load_edm(good))
    for module, name in ALLOWED:
        with pytest.raises(RefusedPickleError, match="refused"):
            safe_load(build_on_global(module, name))
    for obj in ALLOWED.values():
        assert not hasattr(obj, "pwned"), obj
    assert torch.equal(probe(load_edm(good)), expected)  # the same process still loads a valid file


def test_build_cannot_replace_a_stand_in_method(tmp_path):
    """BUILD on the ModuleRecord class calls its own __setstate__ unbound; nothing may change either way."""
    from teachers.safe_pickle import ModuleRecord

    before = dict(vars(ModuleRecord))
    ops = Ops().glob("torch.nn.modules.container", "ModuleDict").dict()
    item(ops, "__setstate__", lambda o: o.none())
    with pytest.raises(RefusedPickleError):
        safe_load(ops.build().done())
    assert dict(vars(ModuleRecord)) == before


def _dag(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node, node]  # 2 ** depth leaves, depth + 1 objects in the pickle
    return node


def test_shared_references_are_not_expanded(tmp_path):
    data = safe_load(edm_pickle_bytes(tiny_net(), {**PRECOND, "channel_mult": _dag(20)}))
    with pytest.raises(RefusedPickleError, match="shared"):
        plain(data["ema"].init_kwargs)


def test_shared_submodules_are_not_walked_twice():
    def state(o):  # _modules = {"a": m, "b": m}, m the same record, 20 levels deep
        o.dict()
        item(o, "_modules", lambda o: o.dict().str("a").get(1).setitem().str("b").get(1).setitem())
    ops = Ops()
    record(ops, "Leaf", lambda o: o.dict()).put(1)
    for _ in range(20):
        record(ops, "Node", state).put(1)
    with pytest.raises(RefusedPickleError, match="shared"):
        collect_tensors(safe_load(ops.done()))


def _modules_state(o, name, memo):  # {"_modules": {name: memo[memo]}}
    o.dict()
    item(o, "_modules", lambda o: o.dict().str(name).get(memo).setitem())


def test_a_module_cycle_is_refused(tmp_path):
    ops = Ops().dict().str("ema")
    record(ops, "EDMPrecond", lambda o: o.dict().str("_modules").dict().put(1).setitem()).put(2)
    ops.get(1).str("model").get(2).setitem().pop().setitem()  # modules["model"] = the record itself
    blob = ops.done()
    with pytest.raises(RefusedPickleError, match="cycle"):
        collect_tensors(safe_load(blob)["ema"])
    with pytest.raises(TeacherSpecError, match="cyclic.pkl"):  # whatever the loader trips on first
        load_edm(write(tmp_path, blob, "cyclic.pkl"))


def test_a_cycle_in_recorded_kwargs_is_refused():
    cyclic: list = []
    cyclic.append(cyclic)
    data = safe_load(edm_pickle_bytes(tiny_net(), {**PRECOND, "channel_mult": cyclic}))
    with pytest.raises(RefusedPickleError, match="cycle"):
        plain(data["ema"].init_kwargs)


def test_deep_nesting_is_refused_without_a_recursion_error():
    depth = 100_000  # [[[...]]] built by the unpickler's stack machine, no recursion while loading
    ops = Ops().dict().str("channel_mult").raw(b"]" * depth + b"a" * (depth - 1)).setitem()
    with pytest.raises(RefusedPickleError, match="deep"):
        plain(safe_load(ops.done()))
    ops = Ops()
    record(ops, "Leaf", lambda o: o.dict()).put(1)
    for _ in range(5000):
        record(ops, "Block", lambda o: _modules_state(o, "inner", 1)).put(1)
    with pytest.raises(RefusedPickleError, match="deep"):
        collect_tensors(safe_load(ops.done()))


@pytest.mark.parametrize("offset,size,stride", [
    (0, (10**9,), (1,)),      # far past the 3-element storage (was a raw RuntimeError)
    (0, (10**9,), (0,)),      # a stride-0 view: 4 GB once copied, from 12 bytes (was accepted silently)
    (3, (1,), (1,)),          # offset at the end
    (-1, (1,), (1,)), (0, (-2,), (1,)), (0, (2,), (-1,)), (0, (1, 1), (1,)), (0, (1.5,), (1,)),
])
def test_tensor_records_are_bounds_checked_against_their_storage(offset, size, stride):
    with pytest.raises(RefusedPickleError, match="tensor record"):
        safe_load(tensor_record_pickle(offset, size, stride))


def test_tensors_sharing_one_storage_cannot_claim_more_than_the_file(tmp_path):
    """Every weight an in-bounds view of one storage written once: each record is valid, together they are a
    copy bomb (N views of one block are N times the file once copied into a network)."""
    net = tiny_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated; NVlabs files hold them anyway
        shared = torch.randn(max(p.numel() for p in net.parameters())).storage()
    for module in net.modules():
        for key, p in list(module._parameters.items()):
            module._parameters[key] = TensorRecord(shared, 0, tuple(p.shape), p.stride())  # pickled as such
    path = write(tmp_path, edm_pickle_bytes(net, PRECOND), "shared.pkl")
    with pytest.raises(TeacherSpecError, match="shared.pkl.*claim"):
        load_edm(path)


def test_an_in_bounds_tensor_record_is_a_view_of_its_storage():
    t = safe_load(tensor_record_pickle(1, (2,), (1,)))["t"]
    assert t.tolist() == [2.0, 3.0]


@pytest.mark.parametrize("change", [{"img_resolution": "abc"}, {"model_channels": -1}, {"channel_mult": [0]},
                                    {"img_channels": None}, {"num_blocks": 10**12}])
def test_any_error_while_building_from_a_pickle_is_a_refusal_naming_the_file(tmp_path, change):
    path = write(tmp_path, edm_pickle_bytes(tiny_net(), {**PRECOND, **change}), "odd.pkl")
    with pytest.raises(TeacherSpecError, match="odd.pkl"):
        load_edm(path)


def test_a_huge_memo_index_costs_no_memory():
    """LONG_BINPUT 2**26: CPython's C unpickler grows its memo array to the index (1 GB from 10 bytes)."""
    code = ("import resource; from teachers.safe_pickle import safe_load\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "safe_load(bytes.fromhex('80024e72') + (2**26).to_bytes(4, 'little') + b'.')\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 100  # MB of peak memory the load added
