"""Config loading: defaults, overrides, and clear refusals of typos, wrong types and out-of-range values."""
from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from pipeline.errors import TokenGateError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), Config), path


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(ROOT / "configs/fmnist-tiny.yaml", ["train.teacher.epochs=5", "gates.token_stages=[1, 3]",
                                                          "budget.target=0.5", "model.mlp_ratio=2"])
    assert cfg.train.teacher.epochs == 5
    assert cfg.gates.token_stages == (1, 3)
    assert cfg.model.mlp_ratio == 2.0 and isinstance(cfg.model.mlp_ratio, float)


@pytest.mark.parametrize("override, words", [
    ("train.teacher.epoch=3", ["unknown config key 'train.teacher.epoch'", "epochs"]),
    ("gates.treshold=0.5", ["unknown config key 'gates.treshold'"]),
    ("budget.target=1.5", ["budget.target=1.5", "(0, 1]"]),
    ("budget.target=0", ["budget.target=0"]),
    ("gates.init_threshold=-0.2", ["gates.init_threshold=-0.2", "outside"]),
    ("gates.dynamic=sometimes", ["gates.dynamic='sometimes'", "'none'"]),
    ("train.teacher.epochs=three", ["has type str, expected int"]),
    ("model.img_size=30", ["not divisible by model.patch_size=4"]),
    ("nonsense", ["not of the form key=value"]),
    ("train.eval_batch_size=0", ["train.eval_batch_size=0 must be positive"]),
    ("train.label_smoothing=1", ["train.label_smoothing=1.0 is outside [0, 1)"]),
    ("train.search.warmup_steps=-1", ["out-of-range value", "warmup_steps >= 0"]),
])
def test_bad_overrides_name_the_key_and_the_fix(override, words):
    with pytest.raises(TokenGateError) as err:
        load_config(ROOT / "configs/fmnist-tiny.yaml", [override])
    message = str(err.value)
    assert "Fix:" in message and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("text, words", [
    ("model:\n  arch: deit_tiny_patch16_224\n  num_clases: 10\n", "unknown config key 'model.num_clases'.*num_classes"),
    ("- model\n- gates\n", "is a YAML list, not a mapping of sections"),
    ("3\n", "is a YAML int, not a mapping of sections"),
])
def test_a_bad_config_file_is_refused_by_every_loader(tmp_path, text, words):
    """train's load_config, and bench's and visualize's load_target, which reads a CONFIG target with it."""
    from pipeline.bench.target import load_target

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for load in (load_config, load_target):
        with pytest.raises(TokenGateError, match=words):
            load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(TokenGateError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
