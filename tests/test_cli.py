"""Every bad input to `tokengate train` gets one clear line (problem + fix), exit 2, and touches nothing on disk."""
import json

import pytest

from pipeline.cli import main
from tests.conftest import tiny_config


def _run_train(tmp_path, fmnist_root, capsys, *sets, config_text=None):
    config = tmp_path / "cfg.yaml"
    config.write_text(config_text or json.dumps(tiny_config(fmnist_root).to_dict()))
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 *[arg for s in sets for arg in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("sets, words", [
    (["model.arch=vit_tiny_patch16_244"], ["unknown timm model 'vit_tiny_patch16_244'", "vit_tiny_patch16_224"]),
    (["model.arch=vit_base_patch16_gap_224", "model.patch_size=null", "model.embed_dim=null", "model.num_heads=null",
      "model.img_size=32"], ["has no class token"]),
    (["model.arch=deit_tiny_patch16_224", "model.patch_size=null", "model.embed_dim=null", "model.num_heads=null",
      "model.img_size=40"], ["not divisible by patch size"]),
    (["model.img_size=30"], ["not divisible by model.patch_size=7"]),
    (["train.teacher.epoch=2"], ["unknown config key 'train.teacher.epoch'"]),
    (["gates.init_threshold=500"], ["gates.init_threshold=500"]),
    (["budget.target=1.2"], ["budget.target=1.2 is outside (0, 1]"]),
    (["budget.target=0.01"], ["below", "the cheapest this model can get", "raise budget.target"]),
    (["gates.merge_block=0"], ["gates.merge_block=0", "training-free", "tokengate calibrate adds the merge stage"]),
    (["train.kd_temperature=0"], ["train.kd_temperature=0.0 must be positive"]),
    (["data.root=/nonexistent"], ["Fashion-MNIST file /nonexistent/train-images-idx3-ubyte.gz is missing"]),
])
def test_bad_input_is_one_line_with_a_fix(tmp_path, fmnist_root, capsys, sets, words):
    code, err = _run_train(tmp_path, fmnist_root, capsys, *sets)
    assert code == 2 and len(err) == 1, err
    assert "Fix:" in err[0]
    for word in words:
        assert word in err[0]
    assert not (tmp_path / "run").exists(), "a refused run creates nothing"


def test_corrupt_and_mismatched_checkpoints(tmp_path, fmnist_root, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    code, err = _run_train(tmp_path, fmnist_root, capsys, f"model.checkpoint={garbage}")
    assert code == 2 and "corrupt" in err[0] and "Fix:" in err[0]

    import timm
    from safetensors.torch import save_file

    other = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, num_classes=10)
    mismatched = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(mismatched))
    code, err = _run_train(tmp_path, fmnist_root, capsys, f"model.checkpoint={mismatched}")
    assert code == 2 and len(err) == 1 and "other.safetensors has tensors of the wrong shape" in err[0]


def test_empty_dataset(tmp_path, fmnist_root, capsys):
    from tests.conftest import write_idx
    import numpy as np

    empty = tmp_path / "empty"
    empty.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(empty / f"{prefix}-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
        write_idx(empty / f"{prefix}-labels-idx1-ubyte.gz", np.zeros((0,), np.uint8))
    code, err = _run_train(tmp_path, fmnist_root, capsys, f"data.root={empty}")
    assert code == 2 and "do not form a dataset" in err[0]


def test_failed_run_leaves_an_existing_run_untouched(tmp_path, fmnist_root, capsys, tiny_run):
    _, run = tiny_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(tiny_config(fmnist_root).to_dict()))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"junk")
    code = main(["train", "--config", str(config), "--out", str(run), "--set", f"model.checkpoint={garbage}"])
    assert code == 2
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_every_command_is_registered(capsys):
    """The parser lists every pipeline stage; a command module missing from the package fails here, not at a user's
    first `tokengate <stage>`."""
    from pipeline.cli import COMMANDS, build_parser

    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert sorted(choices) == sorted(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: tokengate {name}" in capsys.readouterr().out
