"""The restricted unpickler reads NVlabs-layout pickles as data and refuses anything that would run code."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from nvlabs_pickle import edm_pickle_bytes, hostile_nested_blob_pickle, hostile_system_pickle, source_that_writes

from teachers.networks import build_network
from teachers.registry import TeacherSpecError
from teachers.safe_pickle import (
    ALLOWED,
    PersistentRecord,
    RefusedPickleError,
    _RestrictedUnpickler,
    child,
    collect_tensors,
    safe_load,
)

# FACTS.md, "Checkpoint formats": exactly what a real EDMPrecond + loss + augment pipe needs.
FACTS_ALLOW_LIST = {
    ("collections", "OrderedDict"), ("torch.nn.modules.container", "ModuleDict"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_tensor_v2"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("torch.storage", "_load_from_bytes"), ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    ("copyreg", "_reconstructor"), ("dnnlib.util", "EasyDict"), ("dnnlib", "EasyDict"),
}


def tiny_song_unet():
    torch.manual_seed(0)
    return build_network("song_unet", img_resolution=8, in_channels=3, out_channels=3, model_channels=8,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


PRECOND = dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
               sigma_data=0.5, model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1,
               attn_resolutions=[4], dropout=0.0)


def globals_used(blob: bytes) -> set[tuple[str, str]]:
    """(module, name) of every global the pickle asks for, recorded by a subclass of the safe reader."""
    asked: set[tuple[str, str]] = set()

    class Recording(_RestrictedUnpickler):
        def find_class(self, module, name):
            asked.add((module, name))
            return super().find_class(module, name)

    Recording(io.BytesIO(blob)).load()
    return asked


def test_allow_list_is_exactly_the_documented_one():
    assert set(ALLOWED) == FACTS_ALLOW_LIST


def test_nvlabs_layout_loads_as_data_and_embedded_source_never_runs(tmp_path):
    marker = tmp_path / "source_ran.txt"
    net = tiny_song_unet()
    blob = edm_pickle_bytes(net, PRECOND, module_src=source_that_writes(str(marker)))
    # The fixture really has the NVlabs structure: the persistence reconstructor, nested storage blobs,
    # numpy scalars (skip_scale), EasyDict; and nothing outside the allow-list.
    used = globals_used(blob)
    assert {("torch_utils.persistence", "_reconstruct_persistent_obj"), ("torch.storage", "_load_from_bytes"),
            ("torch._utils", "_rebuild_parameter"), ("torch.nn.modules.container", "ModuleDict"),
            ("dnnlib.util", "EasyDict")} <= used
    assert used <= FACTS_ALLOW_LIST
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)  # stock unpickling needs NVlabs' code (and would exec the source)

    data = safe_load(blob)
    assert not marker.exists()
    assert set(data) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    record = data["ema"]
    assert isinstance(record, PersistentRecord) and record.class_name == "EDMPrecond"
    assert record.init_kwargs == PRECOND and "write_text" in record.module_src  # kept as a string only
    tensors = collect_tensors(child(record, "model"))
    expected = net.state_dict()
    assert set(tensors) == set(expected)
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert data["dataset_kwargs"].path == "cifar10-32x32.zip"


def test_reduce_to_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(RefusedPickleError, match=r"refused.*system") as err:
        safe_load(hostile_system_pickle(f"touch {marker}"))
    assert not marker.exists()
    assert isinstance(err.value, TeacherSpecError)  # what `distill` maps to exit 2


def test_hostile_nested_tensor_blob_is_loaded_weights_only_and_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(RefusedPickleError, match="nested tensor blob"):
        safe_load(hostile_nested_blob_pickle(f"touch {marker}"))
    assert not marker.exists()


def test_file_path_errors_name_the_file(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(hostile_system_pickle("true"))
    with pytest.raises(RefusedPickleError, match="evil.pkl"):
        safe_load(bad)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(RefusedPickleError, match="junk.pkl"):
        safe_load(junk)
