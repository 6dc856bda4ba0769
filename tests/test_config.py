"""Recipes: inheritance, overrides, block replacement, smoke, and errors that name the key."""

import pytest

from distill.config import ConfigError, blocking_differences, resolve, to_plain


def write(path, text):
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "teacher: {name: digits, sigma0: 0.1}\noptim: {lr: 1.0e-3}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim: {weight_decay: 0.01}\n")
    cfg = resolve(child, ["optim.lr=2e-4", "trainer.max_steps=7", "ema.rates=[0.9,0.99]"])
    assert cfg.teacher == {"name": "digits", "sigma0": 0.1}
    assert cfg.optim.lr == 2e-4 and cfg.optim.weight_decay == 0.01
    assert cfg.trainer.max_steps == 7 and list(cfg.ema.rates) == [0.9, 0.99]


def test_block_with_new_name_replaces_instead_of_merging(tmp_path):
    write(tmp_path / "base.yaml", "teacher: {name: digits, sigma0: 0.1, conditional: true}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nteacher: {name: toy2d, modes: 4}\n")
    assert resolve(child).teacher == {"name": "toy2d", "modes": 4}
    # The same rule on the command line: `teacher.name=... teacher.x=...` drops inherited kwargs.
    cfg = resolve(tmp_path / "base.yaml", ["teacher.name=toy2d", "teacher.radius=3"])
    assert cfg.teacher == {"name": "toy2d", "radius": 3}
    # And against the schema's defaults: an MLP student does not inherit small_unet's channel_mult.
    assert resolve(None, ["student.network.name=mlp"]).student.network == {"name": "mlp"}
    # The same name merges.
    assert resolve(tmp_path / "base.yaml", ["teacher.sigma0=0.2"]).teacher["conditional"] is True


@pytest.mark.parametrize("override, words", [
    (["trainer.max_stepz=3"], ["trainer.max_stepz", "max_steps"]),
    (["bogus.key=1"], ["bogus", "trainer"]),
    (["trainer.max_steps=abc"], ["trainer.max_steps"]),
    (["loss.name=l3"], ["loss.name", "l2"]),
    (["method.N=1"], ["method.N"]),
    (["not_an_override"], ["key=value"]),
])
def test_errors_name_the_key_and_choices(override, words):
    with pytest.raises(ConfigError) as err:
        resolve(None, override)
    for w in words:
        assert w in str(err.value)


def test_recipe_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(tmp_path / "missing.yaml")
    write(tmp_path / "loop.yaml", "base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        resolve(tmp_path / "loop.yaml")
    write(tmp_path / "bad.yaml", "run: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        resolve(tmp_path / "bad.yaml")


def test_smoke_shrinks_any_recipe():
    cfg = resolve(None, ["run.smoke=true", "trainer.max_steps=100000", "data.batch_size=512"])
    assert cfg.trainer.max_steps == 2 and cfg.data.batch_size == 4
    assert cfg.student.network["width"] == 8 and cfg.teacher["smoke"] is True


def test_resume_may_change_only_logging_and_length():
    a = to_plain(resolve(None, []))
    b = to_plain(resolve(None, ["trainer.max_steps=5000", "eval.num=10", "optim.lr=1e-3"]))
    assert blocking_differences(a, b) == ["optim.lr"]
