"""Datasets: the idx parser, ImageFolder, deterministic splits, and clear errors for broken data."""
import gzip

import numpy as np
import pytest
import torch

from pipeline.config import DataConfig, ModelConfig
from pipeline.data import load_dataset, read_idx, stratified_indices
from pipeline.errors import TokenGateError
from tests.conftest import write_idx

GREY28 = ModelConfig(img_size=28, in_chans=1, num_classes=10)


def test_idx_roundtrip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def test_fashion_mnist_format_loads_with_official_split(fmnist_root):
    data = load_dataset(DataConfig(root=str(fmnist_root)), GREY28)
    assert (len(data.train), len(data.val)) == (512, 200)
    images, labels = next(data.batches(data.val, 8))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64


def test_batches_convert_to_the_model_geometry(fmnist_root):
    data = load_dataset(DataConfig(root=str(fmnist_root)), ModelConfig(img_size=56, in_chans=3, num_classes=10))
    images, _ = next(data.batches(data.train, 4))
    assert images.shape == (4, 3, 56, 56)
    torch.testing.assert_close(images[:, 0], images[:, 2], rtol=0, atol=0)  # grey replicated to RGB


def test_limits_are_deterministic_and_stratified(fmnist_root):
    cfg = DataConfig(root=str(fmnist_root), train_limit=100, val_limit=50)
    a, b = load_dataset(cfg, GREY28), load_dataset(cfg, GREY28)
    assert a.train.ids == b.train.ids and len(a.train) == 100 and len(a.val) == 50
    assert torch.bincount(a.train.labels, minlength=10).tolist() == [10] * 10
    labels = torch.arange(1000) % 4
    assert torch.bincount(labels[stratified_indices(labels, 40, seed=3)]).tolist() == [10, 10, 10, 10]


def test_shuffled_batches_depend_on_seed_and_epoch_only(fmnist_root):
    data = load_dataset(DataConfig(root=str(fmnist_root)), GREY28)
    first = [y for _, y in data.batches(data.train, 64, shuffle=True, seed=1, epoch=0)]
    again = [y for _, y in data.batches(data.train, 64, shuffle=True, seed=1, epoch=0)]
    other = [y for _, y in data.batches(data.train, 64, shuffle=True, seed=1, epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(TokenGateError, match="dataset-fashion-mnist"):
        load_dataset(DataConfig(root=str(tmp_path)), GREY28)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "bad-magic", "empty"])
def test_corrupt_idx_files_are_named(tmp_path, fmnist_root, damage):
    for f in fmnist_root.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    broken = {"truncated": gzip.compress(raw[:-100]), "not-gzip": b"hello world",
              "bad-magic": gzip.compress(b"\x01\x02" + raw[2:]), "empty": gzip.compress(raw[:4] + raw[4:16])}[damage]
    target.write_bytes(broken)
    with pytest.raises(TokenGateError, match="train-images-idx3-ubyte.gz"):
        load_dataset(DataConfig(root=str(tmp_path)), GREY28)


def _image_folder(root, classes=("cat", "dog"), per_class=5):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 10, 3), 40 * c + i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_split_is_deterministic_and_disjoint(tmp_path):
    _image_folder(tmp_path)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2)
    model = ModelConfig(img_size=16, in_chans=3, num_classes=2)
    a, b = load_dataset(cfg, model), load_dataset(cfg, model)
    assert a.val.ids == b.val.ids and len(a.val) == 2 and len(a.train) == 8
    assert not set(a.val.ids) & set(a.train.ids)
    images, labels = next(a.batches(a.train, 8))
    assert images.shape == (8, 3, 16, 16)


def test_image_folder_errors(tmp_path):
    model = ModelConfig(img_size=16, in_chans=3, num_classes=2)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(TokenGateError, match="no images found"):
        load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty")), model)
    with pytest.raises(TokenGateError, match="does not exist"):
        load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "missing")), model)
    _image_folder(tmp_path / "broken")
    (tmp_path / "broken" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(TokenGateError, match="0.png cannot be decoded"):
        data = load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "broken")), model)
        list(data.batches(data.train, 100))
        list(data.batches(data.val, 100))


def test_class_count_mismatch(fmnist_root):
    with pytest.raises(TokenGateError, match="model.num_classes=10"):
        load_dataset(DataConfig(root=str(fmnist_root)), ModelConfig(num_classes=7))
