"""Anomaly-detection image data: MVTec AD category folders, plain image folders, image and mask loading.

Why: anomaly models are trained on normal images only and judged on a test split of normal and defective images
with per-pixel masks; MVTec AD is the standard benchmark, and ``memstream data synth-defects`` writes its
synthetic set in the same layout, so one reader serves the benchmark, the synthetic set and users' own copies.

An MVTec AD category folder::

    <category>/train/good/000.png                   normal images only (training)
    <category>/test/good/000.png                    normal test images (label 0, no mask)
    <category>/test/<defect>/000.png                defective test images (label 1), one folder per defect type
    <category>/ground_truth/<defect>/000_mask.png   their masks: single channel, 0 normal, > 0 (255) anomalous

A dataset root holds one folder per category (other folders, such as the synthetic set's ``video/``, are
skipped). Images: png/jpg/jpeg/bmp/tif/tiff in any letter case, read in sorted file-name order. A mask is found
as ``<stem>_mask.<ext>`` (MVTec AD) or ``<stem>.<ext>`` (VisA and similar copies in the MVTec layout).

:func:`load_image` gives ``(H, W, 3)`` uint8 RGB and :func:`load_mask` ``(H, W)`` bool, both resized to a
requested size given as ``int`` (square) or ``(height, width)``. Bad layouts raise ``FileNotFoundError`` (a folder
or a mask is missing) or ``ValueError`` (a folder without images, an unreadable file), naming the path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
_CATEGORY_PARTS = {"good", "train", "normal"}  # folder names that do not name a category (read_folder)


@dataclass(frozen=True)
class AnomalySample:
    """One image: ``label`` 0 normal / 1 anomalous, ``defect`` "good" or the defect folder's name, ``mask_path``
    its ground-truth mask (None for normal images and for anomalous ones without a mask)."""

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None


@dataclass
class AnomalyDataset:
    """One category: ``train`` holds normal images only; ``test`` normal and anomalous ones, in sorted order."""

    root: Path
    category: str
    train: list[AnomalySample] = field(default_factory=list)
    test: list[AnomalySample] = field(default_factory=list)

    @property
    def defects(self) -> list[str]:
        """The defect types of the test split (without "good"), sorted."""
        return sorted({s.defect for s in self.test if s.label == 1})


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (extensions of ``IMAGE_EXTENSIONS``, any case), sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    """``gt_dir/<stem>_mask.<ext>`` or else ``gt_dir/<stem>.<ext>`` (any image extension), None if neither."""
    if not gt_dir.is_dir():
        return None
    candidates = {p.name.lower(): p for p in gt_dir.iterdir() if p.is_file()}
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in (image.suffix, *IMAGE_EXTENSIONS):
            found = candidates.get(f"{stem}{ext}".lower())
            if found is not None:
                return found
    return None


def _read_test(test_dir: Path, gt_root: Path | None, masks_required: bool) -> list[AnomalySample]:
    """``test_dir/good`` (label 0) and every other subfolder (label 1, masks from ``gt_root/<defect>``)."""
    samples: list[AnomalySample] = []
    loose = list_images(test_dir)
    if loose:
        log.warning("%s: %d image(s) outside a good/ or defect subfolder have no label and are skipped: %s",
                    test_dir, len(loose), loose[0].name)
    for sub in _subfolders(test_dir):
        images = list_images(sub)
        if not images:
            log.warning("%s: no images, skipped", sub)
            continue
        if sub.name == GOOD:
            samples += [AnomalySample(p, 0, GOOD, None) for p in images]
            continue
        gt_dir = gt_root / sub.name if gt_root is not None else None
        if gt_dir is not None and not gt_dir.is_dir() and not masks_required:
            log.info("%s: no mask folder %s; masks of %s are None", test_dir, gt_dir, sub.name)
            gt_dir = None
        for p in images:
            mask = _find_mask(gt_dir, p) if gt_dir is not None else None
            if mask is None and gt_dir is not None:
                raise FileNotFoundError(f"no mask for defect image {p}: expected {gt_dir / (p.stem + '_mask.png')}")
            samples.append(AnomalySample(p, 1, sub.name, mask))
    if not samples:
        raise ValueError(f"{test_dir}: no test images (expected good/ and <defect>/ subfolders with images)")
    return samples


def is_category(folder: Path) -> bool:
    """Whether ``folder`` is an MVTec AD category folder: it has ``train/good/`` and ``test/``."""
    folder = Path(folder)
    return (folder / "train" / GOOD).is_dir() and (folder / "test").is_dir()


def find_categories(root) -> list[Path]:
    """``[root]`` if ``root`` is a category folder, else its category subfolders (sorted; others skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"anomaly data folder not found: {root}")
    if is_category(root):
        return [root]
    found = [p for p in _subfolders(root) if is_category(p)]
    if not found:
        raise FileNotFoundError(f"{root}: neither an MVTec AD category (train/good/ and test/) nor a folder of them")
    return found


def read_mvtec(category_dir) -> AnomalyDataset:
    """Read one MVTec AD category folder (layout in the module docstring). Every defect image must have its mask
    (``FileNotFoundError`` naming the image otherwise); normal images have ``mask_path`` None."""
    root = Path(category_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MVTec AD category folder not found: {root}")
    train_dir, test_dir = root / "train" / GOOD, root / "test"
    for needed in (train_dir, test_dir):
        if not needed.is_dir():
            raise FileNotFoundError(f"{root}: not an MVTec AD category folder: {needed} is missing")
    train = [AnomalySample(p, 0, GOOD, None) for p in list_images(train_dir)]
    if not train:
        raise ValueError(f"{train_dir}: no training images ({'/'.join(IMAGE_EXTENSIONS)})")
    test = _read_test(test_dir, root / "ground_truth", masks_required=True)
    return AnomalyDataset(root=root, category=root.name, train=train, test=test)


def _category_name(folder: Path) -> str:
    for part in (folder, *folder.parents):
        if part.name and part.name.lower() not in _CATEGORY_PARTS:
            return part.name
    return folder.name


def read_folder(normal_dir, test_dir=None) -> AnomalyDataset:
    """A plain reader: the images directly in ``normal_dir`` are the (normal) training set; ``test_dir`` (optional)
    holds ``good/`` (normal) and any other subfolders (anomalous, named by the folder). Masks are optional: from a
    sibling ``ground_truth/<defect>/`` of ``test_dir`` as in MVTec AD (then every image of that defect needs one),
    else None."""
    normal_dir = Path(normal_dir)
    if not normal_dir.is_dir():
        raise FileNotFoundError(f"folder of normal images not found: {normal_dir}")
    train = [AnomalySample(p, 0, GOOD, None) for p in list_images(normal_dir)]
    if not train:
        raise ValueError(f"{normal_dir}: no images ({'/'.join(IMAGE_EXTENSIONS)})")
    test: list[AnomalySample] = []
    if test_dir is not None:
        test_dir = Path(test_dir)
        if not test_dir.is_dir():
            raise FileNotFoundError(f"test folder not found: {test_dir}")
        gt_root = test_dir.parent / "ground_truth"
        test = _read_test(test_dir, gt_root if gt_root.is_dir() else None, masks_required=False)
    return AnomalyDataset(root=normal_dir, category=_category_name(normal_dir.resolve()), train=train, test=test)


def _hw(size) -> tuple[int, int] | None:
    """``size`` (int, (height, width) or None) -> (height, width) or None; ValueError naming a bad value."""
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int | np.integer) else tuple(size) if isinstance(size, tuple | list) else ()
    if len(hw) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or (height, width) of positive ints, got {size!r}")
    return int(hw[0]), int(hw[1])


def _read(path, flags: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), flags)
    if image is None or image.size == 0:
        raise ValueError(f"cannot read image {path} (corrupt or not an image)")
    return image


def load_image(path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, resized to ``size`` (int, (height, width); None keeps it): area
    interpolation when shrinking, bilinear when enlarging. Grayscale is repeated to 3 channels, alpha dropped,
    16-bit scaled to 8-bit (``/257``)."""
    hw = _hw(size)
    image = _read(path, cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{path}: unsupported channel count {image.shape[2]}")
    if hw is not None and hw != image.shape[:2]:
        shrink = hw[0] <= image.shape[0] and hw[1] <= image.shape[1]
        image = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


def load_mask(path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as ``(H, W)`` bool (any channel > 0 is anomalous), resized to ``size`` (int,
    (height, width); None keeps it) with nearest-neighbour interpolation."""
    hw = _hw(size)
    mask = _read(path, cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    mask = (mask > 0).astype(np.uint8)
    if hw is not None and hw != mask.shape:
        mask = cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 0
