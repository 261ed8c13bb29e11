"""Calibration sets: deterministic, stratified, verified on load, and every bad set refused with its fix."""
import json

import numpy as np
import pytest
import torch

from calib import sets
from calib.__main__ import main as calib_main
from calib.inputs import model_inputs
from calib.manifest import Manifest
from pipeline.errors import TokenGateError
from tests.conftest import synthetic_images, write_idx


def test_building_twice_gives_the_same_manifest_and_pixels(fmnist_root, tmp_path):
    first = sets.build_fashion_mnist(str(fmnist_root), 5, seed=3, name="a")
    second = sets.build_fashion_mnist(str(fmnist_root), 5, seed=3, name="a")
    assert first[0].to_dict() == second[0].to_dict()
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[2], second[2])
    other = sets.build_fashion_mnist(str(fmnist_root), 5, seed=4, name="a")[0]
    assert other.digest != first[0].digest, "another seed is another set"
    import shutil
    shutil.copytree(fmnist_root, tmp_path / "elsewhere")
    moved = sets.build_fashion_mnist(str(tmp_path / "elsewhere"), 5, seed=3, name="a")[0]
    assert moved.id == first[0].id and moved.source["root"] != first[0].source["root"], "same images, same set"


def test_stratified_counts_and_manifest_content(fmnist_root):
    manifest, images, labels = sets.build_fashion_mnist(str(fmnist_root), 7, seed=0, name="s")
    assert manifest.counts == [7] * 10 and images.shape == (70, 1, 28, 28) and images.dtype == np.uint8
    assert [e.label for e in manifest.entries] == labels.tolist()
    assert len({e.id for e in manifest.entries}) == 70 and all(e.id.startswith("train:") for e in manifest.entries)
    first = manifest.entries[0]
    import hashlib
    assert first.sha256 == hashlib.sha256(images[0].tobytes()).hexdigest()
    assert manifest.source == {"kind": "fashion-mnist", "root": str(fmnist_root), "split": "train"}
    big = sets.stratified_pick(torch.tensor([0] * 3 + [1] * 10), per_class=5, seed=0)
    assert torch.bincount(torch.tensor([0] * 3 + [1] * 10)[big]).tolist() == [3, 5], "a small class gives all it has"


def test_save_load_round_trip_and_tampering(fmnist_root, tmp_path):
    manifest, images, labels = sets.build_fashion_mnist(str(fmnist_root), 3, seed=0, name="rt")
    folder = sets.save_set(tmp_path / "rt", manifest, images, labels)
    loaded = sets.load_set(folder / "manifest.json")
    assert loaded.manifest == manifest and torch.equal(loaded.images, torch.from_numpy(images))
    np.savez_compressed(folder / "images.npz", images=255 - images, labels=labels)
    with pytest.raises(TokenGateError, match="does not match its manifest"):
        sets.load_set(folder)
    sets.save_set(folder, manifest, images, labels)
    data = json.loads((folder / "manifest.json").read_text())
    data["entries"][0]["label"] = (data["entries"][0]["label"] + 1) % 10
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(TokenGateError, match="was edited"):
        sets.load_set(folder)
    with pytest.raises(TokenGateError, match="not a calibration set"):
        sets.load_set(tmp_path)


def test_empty_and_single_class_sets_are_refused(fmnist_root, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    images, _ = synthetic_images(40, 5)
    write_idx(one / "train-images-idx3-ubyte.gz", images)
    write_idx(one / "train-labels-idx1-ubyte.gz", np.full(40, 3, np.uint8))
    write_idx(one / "t10k-images-idx3-ubyte.gz", images)
    write_idx(one / "t10k-labels-idx1-ubyte.gz", np.full(40, 3, np.uint8))
    assert calib_main(["build", "--fashion-mnist", str(one), "--out", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one class only" in err[0] and "Fix:" in err[0]
    empty = tmp_path / "folder"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    assert calib_main(["build", "--image-folder", str(empty), "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no images" in err[0]
    # A set written by hand (or by an old tool) with one class is refused on load too.
    labels = np.zeros(4, np.int64)
    pixels = np.zeros((4, 1, 28, 28), np.uint8)
    manifest = Manifest("hand", {"kind": "x"}, 0, 4, ["a", "b"], [1, 28, 28], "images.npz",
                        sets.arrays_digest(pixels, labels), [sets.Entry(str(i), 0, "0") for i in range(4)])
    sets.save_set(tmp_path / "hand", manifest, pixels, labels)
    with pytest.raises(TokenGateError, match="one class only"):
        sets.load_set(tmp_path / "hand")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_image_folder_set_hashes_files_and_resizes_for_the_model(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("bird", "cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    assert calib_main(["build", "--image-folder", str(root), "--size", "14", "--per-class", "3",
                       "--out", str(tmp_path / "set")]) == 0
    cal = sets.load_set(tmp_path / "set")
    assert cal.manifest.counts == [3, 3, 3] and tuple(cal.images.shape) == (9, 3, 14, 14)
    import hashlib
    entry = cal.manifest.entries[0]
    assert entry.sha256 == hashlib.sha256((root / entry.id).read_bytes()).hexdigest()
    capsys.readouterr()
    x = model_inputs(cal, 1, 28, (0.5,), (0.5,))  # policy: resized (and made grey) like training data, with a note
    assert tuple(x.shape) == (9, 1, 28, 28)
    assert "resized to the model's 28x28" in capsys.readouterr().err
    odd = sets.CalibSet(cal.manifest, cal.images[:, :, :, :10], cal.labels, cal.folder)
    with pytest.raises(TokenGateError, match="14x10 images"):
        model_inputs(odd, 1, 28, (0.5,), (0.5,))


def test_build_default_is_idempotent(fmnist_root, tmp_path, capsys):
    out = tmp_path / "default"
    assert calib_main(["build-default", "--root", str(fmnist_root), "--out", str(out), "--per-class", "2"]) == 0
    assert "wrote calibration set" in capsys.readouterr().out
    assert calib_main(["build-default", "--root", str(fmnist_root), "--out", str(out), "--per-class", "2"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert calib_main(["show", str(out)]) == 0 and "(verified)" in capsys.readouterr().out
