"""`memstream data synth-defects`: MVTec layout, masks vs clean twins, video labels, determinism, seeds, bad options."""

from __future__ import annotations

import json

import cv2
import pytest
from memstream.pipelines.synth_defects import CATEGORIES, VERSION, cli_synth_defects

TINY = ["--size", "64", "--train", "2", "--test-good", "1", "--test-defect", "1", "--video-train", "1",
        "--video-test", "1", "--video-seconds", "6", "--video-size", "64", "--jobs", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("defects") / "set"
    assert cli_synth_defects(["--out", str(out), *TINY]) == 0
    return out, json.loads((out / "manifest.json").read_text())


def test_smoke_layout(dataset):
    out, doc = dataset
    assert doc["version"] == VERSION and list(doc["categories"]) == list(CATEGORIES)
    for category, (_, defects) in CATEGORIES.items():
        root = out / category
        assert sorted(p.name for p in (root / "train" / "good").iterdir()) == ["000.png", "001.png"]
        for defect in defects:
            img = cv2.imread(str(root / "test" / defect / "000.png"))
            mask = cv2.imread(str(root / "ground_truth" / defect / "000_mask.png"), cv2.IMREAD_UNCHANGED)
            assert img.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.max() == 255
    labels = json.loads((out / "video" / "labels.json").read_text())["videos"]
    assert set(labels) == {"train-0000", "test-0000"} and labels["test-0000"]["intervals"]
    assert (out / "README.md").exists()
