"""EDM / EDM2 teachers: NVlabs-layout pickles and safetensors load back to identical denoisers, safely."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from nvlabs_pickle import edm_pickle_bytes, hostile_nested_blob_pickle, hostile_system_pickle, source_that_writes

import teachers
from teachers.base import edm_scalings, expand_like
from teachers.edm import EDM_LICENCE, EDMTeacher, save_edm
from teachers.feeding import build_feeding
from teachers.networks import build_network
from teachers.registry import TeacherSpecError
from teachers.safe_pickle import RefusedPickleError

TINY = {
    "ddpmpp": dict(model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   dropout=0.0, augment_dim=9),
    "ncsnpp": dict(model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   dropout=0.0, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                   resample_filter=[1, 3, 3, 1]),
    "skip": dict(model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                 dropout=0.0, encoder_type="skip", decoder_type="skip"),
    "adm": dict(model_type="DhariwalUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], dropout=0.0),
}
NET_NAME = {"SongUNet": "song_unet", "DhariwalUNet": "dhariwal_unet"}


def random_net(variant: str, label_dim: int = 0):
    """A tiny network of the variant with every weight random (EDM zero-inits some; that would hide bugs)."""
    torch.manual_seed(1)
    kw = dict(TINY[variant])
    net = build_network(NET_NAME[kw.pop("model_type")], img_resolution=8, in_channels=3, out_channels=3,
                        label_dim=label_dim, **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def precond_kwargs(variant: str, label_dim: int = 0) -> dict:
    return dict(img_resolution=8, img_channels=3, label_dim=label_dim, use_fp16=False, sigma_min=0,
                sigma_max=float("inf"), sigma_data=0.5, **TINY[variant])


def reference_teacher(net, label_dim=0):
    return EDMTeacher(net, sigma_min=0.002, sigma_max=80, image_shape=(3, 8, 8), num_classes=label_dim)


def probe(teacher, label_dim=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g) * 5
    cond = torch.tensor([0, 2, 1]) if label_dim else None
    return teacher.denoise(x, torch.tensor([0.01, 1.0, 40.0]), cond)


@pytest.mark.parametrize("variant,label_dim", [("ddpmpp", 0), ("ncsnpp", 0), ("skip", 0), ("adm", 3)])
def test_pickle_and_safetensors_load_back_to_identical_outputs(tmp_path, variant, label_dim):
    net = random_net(variant, label_dim)
    expected = probe(reference_teacher(net, label_dim), label_dim)
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(edm_pickle_bytes(net, precond_kwargs(variant, label_dim)))
    from_pkl = teachers.load({"name": "edm", "path": str(pkl)})
    assert torch.equal(probe(from_pkl, label_dim), expected)
    assert from_pkl.image_shape == (3, 8, 8) and from_pkl.num_classes == label_dim
    assert (from_pkl.sigma_min, from_pkl.sigma_max) == (0.002, 80.0)  # EDM's [0, inf) -> Table 1's range
    assert from_pkl.licence == EDM_LICENCE
    assert from_pkl.file_sha256 == hashlib.sha256(pkl.read_bytes()).hexdigest()

    st = save_edm(from_pkl.backbone, tmp_path / "net.safetensors", sigma_min=0.002, sigma_max=80, sigma_data=0.5,
                  image_shape=(3, 8, 8), num_classes=label_dim)
    from_st = teachers.load({"name": "edm", "path": str(st)})
    assert torch.equal(probe(from_st, label_dim), expected)
    assert json.loads(st.with_suffix(".json").read_text())["network"]["name"] == NET_NAME[TINY[variant]["model_type"]]


def test_denoiser_is_edm_preconditioning_of_the_network():
    net = random_net("ddpmpp")
    teacher = reference_teacher(net)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 7.0])
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)  # EDM Table 1
    by_hand = expand_like(c_skip, x) * x + expand_like(c_out, x) * net(expand_like(c_in, x) * x, c_noise, None)
    assert torch.allclose(teacher.denoise(x, sigma), by_hand, atol=1e-6)


def test_student_copy_is_rebuilt_from_its_specs_alone(tmp_path):
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(edm_pickle_bytes(random_net("ncsnpp"), precond_kwargs("ncsnpp")))
    teacher = teachers.load({"name": "edm", "path": str(pkl)})
    spec = json.loads(json.dumps({"net": teacher.backbone.build_spec, "feeding": teacher.feeding.spec()}))
    net = build_network(**spec["net"])
    net.load_state_dict(teacher.backbone.state_dict())
    feeding = build_feeding(spec["feeding"])
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    assert torch.equal(feeding.denoise(net.eval(), x, sigma), teacher.denoise(x, sigma))


def test_embedded_source_is_never_executed(tmp_path):
    marker = tmp_path / "source_ran.txt"
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(edm_pickle_bytes(random_net("ddpmpp"), precond_kwargs("ddpmpp"),
                                     module_src=source_that_writes(str(marker))))
    teacher = teachers.load({"name": "edm", "path": str(pkl)})
    assert not marker.exists()
    assert probe(teacher).isfinite().all()


@pytest.mark.parametrize("make", [hostile_system_pickle, hostile_nested_blob_pickle])
def test_hostile_files_are_refused_by_teachers_load(tmp_path, make):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(make(f"touch {marker}"))
    with pytest.raises(RefusedPickleError, match="refused"):
        teachers.load({"name": "edm", "path": str(pkl)})
    assert not marker.exists()


def test_records_of_unknown_classes_or_kwargs_are_refused(tmp_path):
    pkl = tmp_path / "odd.pkl"
    pkl.write_bytes(edm_pickle_bytes(random_net("ddpmpp"), precond_kwargs("ddpmpp"), precond_class="VEPrecond"))
    with pytest.raises(TeacherSpecError, match="VEPrecond"):
        teachers.load({"name": "edm", "path": str(pkl)})
    kw = {**precond_kwargs("ddpmpp"), "model_type": "Evil"}
    pkl.write_bytes(edm_pickle_bytes(random_net("ddpmpp"), kw))
    with pytest.raises(TeacherSpecError, match="Evil"):
        teachers.load({"name": "edm", "path": str(pkl)})


def test_missing_file_names_path_and_expected_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pkl.*EDM network pickle"):
        teachers.load({"name": "edm", "path": str(tmp_path / "nope.pkl")})
    with pytest.raises(FileNotFoundError, match=r"nope\.pkl.*EDM2"):
        teachers.load({"name": "edm2", "path": str(tmp_path / "nope.pkl")})


def test_smoke_teachers_need_no_file():
    for name in ("edm", "edm2"):
        t = teachers.load({"name": name, "smoke": True, "image_shape": [1, 16, 16], "num_classes": 4})
        out = t.denoise(torch.randn(2, 1, 16, 16), 2.0, torch.tensor([0, 3]))
        assert out.shape == (2, 1, 16, 16) and out.isfinite().all()


def test_edm2_pixel_pickle_float16_loads_with_forced_weight_normalisation(tmp_path):
    torch.manual_seed(0)
    kw = dict(img_resolution=8, img_channels=3, label_dim=5, model_channels=16, channel_mult=[1, 2], num_blocks=1,
              attn_resolutions=[4], channels_per_head=16)
    net = build_network("edm2_unet", **kw).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.7)  # zero-initialised gains would make the output trivially 0
    half = {k: v.half() for k, v in net.state_dict().items()}  # EDM2 stores `ema` in float16
    net.load_state_dict({k: v.float() for k, v in half.items()})
    ref = EDMTeacher(net, sigma_min=0.002, sigma_max=80, image_shape=(3, 8, 8), num_classes=5)
    fp16_net = build_network("edm2_unet", **kw).half()
    fp16_net.load_state_dict(half)
    pkl = tmp_path / "edm2-img8.pkl"
    pkl.write_bytes(edm_pickle_bytes(fp16_net, {**kw, "use_fp16": True, "sigma_data": 0.5, "logvar_channels": 128},
                                     precond_class="Precond", attr="unet"))
    teacher = teachers.load({"name": "edm2", "path": str(pkl)})
    assert next(teacher.backbone.parameters()).dtype == torch.float32
    assert torch.equal(probe(teacher, 5), probe(ref, 5))
    assert probe(teacher, 5).abs().sum() > 0 and teacher.licence == EDM_LICENCE
    # Weights are used as directions only: scaling a stored weight does not change the output.
    with torch.no_grad():
        teacher.backbone.enc["8x8_conv"].weight.mul_(3.0)
    err = (probe(teacher, 5) - probe(ref, 5)).abs().max()
    print("max abs change after scaling a weight by 3:", float(err))
    assert err < 1e-3  # only the 1e-4 eps of normalize() sees the scale


@pytest.mark.parametrize("spec", [{"name": "edm"}, {"name": "openai_cm", "arch": "imagenet64"}, {"name": "ddpm"}])
def test_students_start_as_copies_of_every_family(spec):
    """f(x, s) = c_skip x + c_out F with the teacher's own feeding equals the teacher away from sigma_min."""
    import copy

    from distill.math.precond import ConsistencyStudent

    teacher = teachers.load({**spec, "smoke": True})
    student = ConsistencyStudent(copy.deepcopy(teacher.backbone), teacher.feeding, sigma_min=teacher.sigma_min,
                                 sigma_max=teacher.sigma_max, sigma_data=teacher.sigma_data,
                                 image_shape=teacher.image_shape, num_classes=teacher.num_classes).eval()
    x = torch.randn(2, *teacher.image_shape) * 20
    cond = torch.tensor([3, 7]) if teacher.num_classes else None
    with torch.no_grad():
        f = student(x, 20.0, cond)
    d = teacher.denoise(x, 20.0, cond)
    # CM and EDM scalings differ by O(sigma_min / sigma) at sigma = 20 (Song et al. 2023, appendix C).
    assert ((f - d).abs().max() / d.abs().max()) < 1e-3


def test_refusals_are_bad_input_for_the_cli():
    from distill.cli import bad_input_types

    assert issubclass(RefusedPickleError, bad_input_types())  # `distill` prints the reason and exits 2


@pytest.mark.slow  # a CLI subprocess (~6 s of CPU, much more on a loaded machine)
def test_distill_fit_exits_2_on_a_refused_file_and_writes_nothing(tmp_path, run_cli):
    from tests.conftest import RECIPES

    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(hostile_system_pickle(f"touch {marker}"))
    proc = run_cli("fit", RECIPES / "demo.yaml", "teacher.name=edm", "teacher.path=evil.pkl", "run.dir=run")
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "posix.system" in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()
