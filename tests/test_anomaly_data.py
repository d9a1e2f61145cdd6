"""Anomaly data: the real reduced MVTec AD categories load unchanged (counts as on disk), find_categories on a
category / a root / the synthetic set's layout, read_folder, image and mask loading (colour order, grayscale,
16-bit, alpha, resizing) and bad layouts / files with errors naming the path."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from memstream.pipelines.anomaly_data import (
    AnomalySample,
    find_categories,
    load_image,
    load_mask,
    read_folder,
    read_mvtec,
)

ANOMALY = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "anomaly"
# What the reduced categories hold on disk: 50 train/good, 2 test/good, 4 defect types x 2 images, one mask each.
REAL = {"hazelnut_reduced": ("crack", "cut", "hole", "print"),
        "transistor_reduced": ("bent_lead", "cut_lead", "damaged_case", "misplaced")}


def _real(category: str) -> Path:
    folder = ANOMALY / category
    if not folder.is_dir():
        pytest.skip(f"real MVTec AD sample not present ({folder}; shared/realdata is not part of a user's clone)")
    return folder


def _png(path: Path, value: int = 128, shape=(8, 8, 3), dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, dtype))
    return path


def _category(root: Path, defects=("scratch",), train: int = 3, good: int = 2, per_defect: int = 2) -> Path:
    """A tiny MVTec AD category: 8x8 images, one mask per defect image."""
    for i in range(train):
        _png(root / "train" / "good" / f"{i:03d}.png")
    for i in range(good):
        _png(root / "test" / "good" / f"{i:03d}.png")
    for d in defects:
        for i in range(per_defect):
            _png(root / "test" / d / f"{i:03d}.png")
            _png(root / "ground_truth" / d / f"{i:03d}_mask.png", 255, (8, 8))
    return root


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_reduced_categories_load(name):
    folder = _real(name)
    data = read_mvtec(folder)
    assert data.category == name and data.root == folder
    assert len(data.train) == 50 and all(s.label == 0 and s.defect == "good" and s.mask_path is None
                                         for s in data.train)
    assert [p.path.name for p in data.train] == [f"{i:03d}.png" for i in range(50)]  # sorted, not directory order
    assert len(data.test) == 10 and data.defects == list(REAL[name])
    good = [s for s in data.test if s.label == 0]
    assert len(good) == 2 and all(s.defect == "good" and s.mask_path is None for s in good)
    bad = [s for s in data.test if s.label == 1]
    assert len(bad) == 8 and {s.defect for s in bad} == set(REAL[name])
    for s in bad:
        assert s.mask_path == folder / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
        assert s.mask_path.is_file()
        image, mask = load_image(s.path), load_mask(s.mask_path)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert mask.shape == (256, 256) and mask.dtype == bool and 0 < mask.mean() < 1
    small = load_image(bad[0].path, 64)
    expected = cv2.resize(cv2.cvtColor(cv2.imread(str(bad[0].path)), cv2.COLOR_BGR2RGB), (64, 64),
                          interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small, expected)
    assert load_mask(bad[0].mask_path, (32, 48)).shape == (32, 48)


def test_find_categories_on_real_root_and_category():
    _real("hazelnut_reduced")
    assert [p.name for p in find_categories(ANOMALY)] == sorted(REAL)
    assert find_categories(ANOMALY / "transistor_reduced") == [ANOMALY / "transistor_reduced"]


def test_find_categories_skips_non_categories(tmp_path):
    _category(tmp_path / "weave")
    _category(tmp_path / "board")
    (tmp_path / "video" / "train").mkdir(parents=True)  # the synthetic set's video folder: train/ without good/
    (tmp_path / "video" / "test").mkdir()
    (tmp_path / "notes").mkdir()
    assert [p.name for p in find_categories(tmp_path)] == ["board", "weave"]
    with pytest.raises(FileNotFoundError, match="notes"):
        find_categories(tmp_path / "notes")
    with pytest.raises(FileNotFoundError, match="missing_root"):
        find_categories(tmp_path / "missing_root")


def test_reads_the_synthetic_set(tmp_path):
    from memstream.pipelines.synth_defects import CATEGORIES, generate

    generate(tmp_path / "synth", train=2, test_good=1, test_defect=1, size=32, video_train=1, video_test=1,
             video_seconds=5.0, video_size=64)
    categories = find_categories(tmp_path / "synth")  # video/ (train/, test/ without good/) is not a category
    assert [p.name for p in categories] == sorted(CATEGORIES)
    for folder in categories:
        data = read_mvtec(folder)
        assert len(data.train) == 2 and data.defects == sorted(CATEGORIES[folder.name][1])
        for s in data.test:
            assert (s.mask_path is None) == (s.label == 0)
            if s.mask_path is not None:
                assert load_mask(s.mask_path).shape == load_image(s.path).shape[:2] == (32, 32)
                assert load_mask(s.mask_path).any()


def test_read_mvtec_extensions_order_and_mask_names(tmp_path):
    root = _category(tmp_path / "cat", defects=())
    _png(root / "train" / "good" / "b.JPG")
    _png(root / "train" / "good" / "a.Png")
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    _png(root / "test" / "hole" / "x.bmp")
    _png(root / "ground_truth" / "hole" / "x_mask.PNG", 255, (8, 8))
    _png(root / "test" / "stain" / "y.tif")
    _png(root / "ground_truth" / "stain" / "y.png", 255, (8, 8))  # VisA-style mask name (no _mask)
    data = read_mvtec(root)
    assert [s.path.name for s in data.train] == ["000.png", "001.png", "002.png", "a.Png", "b.JPG"]
    assert [(s.defect, s.label) for s in data.test] == [("good", 0), ("good", 0), ("hole", 1), ("stain", 1)]
    assert data.test[2].mask_path.name == "x_mask.PNG" and data.test[3].mask_path.name == "y.png"
    assert isinstance(data.test[0], AnomalySample) and data.defects == ["hole", "stain"]


def test_read_mvtec_bad_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_mvtec(tmp_path / "nowhere")
    root = _category(tmp_path / "cat")
    (root / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask for defect image .*scratch.001\.png"):
        read_mvtec(root)
    no_train = _category(tmp_path / "no_train", train=0)
    with pytest.raises(FileNotFoundError, match=r"no_train.*train.good"):
        read_mvtec(no_train)
    (no_train / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no_train.train.good: no training images"):
        read_mvtec(no_train)
    empty_test = _category(tmp_path / "empty_test", defects=(), good=0)
    (empty_test / "test").mkdir()
    with pytest.raises(ValueError, match=r"empty_test.test: no test images"):
        read_mvtec(empty_test)


def test_read_folder(tmp_path, caplog):
    for i in range(3):
        _png(tmp_path / "parts" / "train" / "good" / f"{i}.png")
    test = tmp_path / "parts" / "test"
    _png(test / "good" / "g.png")
    _png(test / "dent" / "d.png")
    _png(test / "scuff" / "s.png")
    _png(test / "loose.png")
    with caplog.at_level(logging.WARNING):
        data = read_folder(tmp_path / "parts" / "train" / "good", test)
    assert "loose.png" in caplog.text
    assert data.category == "parts" and len(data.train) == 3
    assert [(s.defect, s.label, s.mask_path) for s in data.test] == [("dent", 1, None), ("good", 0, None),
                                                                      ("scuff", 1, None)]
    _png(tmp_path / "parts" / "ground_truth" / "dent" / "d_mask.png", 255, (8, 8))  # masks for one defect only
    data = read_folder(tmp_path / "parts" / "train" / "good", test)
    assert [s.mask_path.name if s.mask_path else None for s in data.test] == ["d_mask.png", None, None]
    _png(test / "dent" / "e.png")
    with pytest.raises(FileNotFoundError, match=r"no mask for defect image .*e\.png"):
        read_folder(tmp_path / "parts" / "train" / "good", test)
    only_train = read_folder(tmp_path / "parts" / "train" / "good")
    assert only_train.test == [] and len(only_train.train) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no images"):
        read_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="absent"):
        read_folder(tmp_path / "parts" / "train" / "good", tmp_path / "absent")


def test_load_image_formats(tmp_path):
    bgr = np.zeros((6, 10, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = load_image(tmp_path / "blue.png")
    assert rgb.shape == (6, 10, 3) and rgb.dtype == np.uint8 and (rgb[..., 2] == 200).all() and rgb[..., 0].max() == 0
    gray = load_image(_png(tmp_path / "gray.png", 77, (6, 10)))
    assert gray.shape == (6, 10, 3) and (gray == 77).all()
    deep = load_image(_png(tmp_path / "deep.png", 257 * 40, (6, 10), np.uint16))
    assert deep.dtype == np.uint8 and (deep == 40).all()
    alpha = load_image(_png(tmp_path / "alpha.png", 90, (6, 10, 4)))
    assert alpha.shape == (6, 10, 3) and (alpha == 90).all()
    assert load_image(tmp_path / "blue.png", (3, 5)).shape == (3, 5, 3)
    assert load_image(tmp_path / "blue.png", 20).shape == (20, 20, 3)  # enlarging: bilinear


def test_load_mask(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    full = load_mask(tmp_path / "m.png")
    assert full.dtype == bool and full.sum() == 16
    half = load_mask(tmp_path / "m.png", 4)
    np.testing.assert_array_equal(half, np.array([[1, 1, 0, 0]] * 2 + [[0, 0, 0, 0]] * 2, bool))
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0, 1] = 1  # any channel > 0 counts
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    assert load_mask(tmp_path / "c.png").sum() == 1


def test_load_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="broken.png"):
        load_mask(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png")
    _png(tmp_path / "ok.png")
    for bad in (0, (4,), (4, -1), 2.5):
        with pytest.raises(ValueError, match="size"):
            load_image(tmp_path / "ok.png", bad)
