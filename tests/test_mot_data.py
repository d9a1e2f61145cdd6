"""MOTChallenge data: seqinfo.ini, gt/det/result files (round trips, separators, bad rows), sequence folders, the
real MOT15 sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines.mot_data import (
    MOT_COLUMNS,
    MotSequence,
    SeqInfo,
    find_sequences,
    read_mot_file,
    read_seqinfo,
    read_sequence,
    rows_by_frame,
    write_results,
    write_seqinfo,
)

MOT15 = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "mot" / "MOT15"


@pytest.fixture(scope="module")
def mot15() -> Path:
    if not (MOT15 / "TUD-Campus" / "gt" / "gt.txt").is_file():
        pytest.skip(f"MOT15 sample not found at {MOT15} (shared/realdata/mot, see shared/realdata/README.md)")
    return MOT15


def test_seqinfo_round_trip_and_defaults(tmp_path):
    info = SeqInfo("MOT17-02-FRCNN", 30.0, 600, 1920, 1080)
    path = write_seqinfo(tmp_path / "seq", info)
    text = path.read_text()
    assert text.splitlines()[0] == "[Sequence]" and "frameRate=30\n" in text and "seqLength=600\n" in text
    assert read_seqinfo(path) == info and read_seqinfo(path.parent) == info
    (tmp_path / "TUD" / "seqinfo.ini").parent.mkdir()
    (tmp_path / "TUD" / "seqinfo.ini").write_text("[Sequence]\nseqLength=71\n")
    assert read_seqinfo(tmp_path / "TUD") == SeqInfo("TUD", 25.0, 71, 0, 0)
    assert read_seqinfo(tmp_path / "TUD", default_frame_rate=14).frame_rate == 14.0
    (tmp_path / "TUD" / "seqinfo.ini").write_text("[Sequence]\nname=x\nseqLength=7.5\n")
    with pytest.raises(ValueError, match="seqLength"):
        read_seqinfo(tmp_path / "TUD")
    (tmp_path / "TUD" / "seqinfo.ini").write_text("[Sequence]\nname=x\n")
    with pytest.raises(ValueError, match="no seqLength"):
        read_seqinfo(tmp_path / "TUD")
    with pytest.raises(FileNotFoundError, match="seqinfo.ini"):
        read_seqinfo(tmp_path / "missing")


def test_read_mot_file_separators_padding_order(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("2, 1, 10, 20, 30, 40, 1, 1, 0.5\n\n1 2 0 0 5 5\n1,1,1.5,2.5,3,4,0,8,0.25,-1,\n")
    rows = read_mot_file(path)
    assert rows.dtype == np.float64 and rows.shape == (3, len(MOT_COLUMNS))
    np.testing.assert_array_equal(rows, [[1, 1, 1.5, 2.5, 3, 4, 0, 8, 0.25, -1],
                                         [1, 2, 0, 0, 5, 5, -1, -1, -1, -1],
                                         [2, 1, 10, 20, 30, 40, 1, 1, 0.5, -1]])
    path.write_text("")
    assert read_mot_file(path).shape == (0, 10)


@pytest.mark.parametrize("line, message", [
    ("1,1,a,2,3,4", "non-numeric"),
    ("1,1,2,3,4", "6 to 10 columns"),
    ("0,1,2,3,4,5", "frame must be an integer >= 1"),
    ("1.5,1,2,3,4,5", "frame must be an integer >= 1"),
    ("1,1,2,3,0,5", "width and height"),
    ("1,1,2,3,4,-5", "width and height"),
    ("1,1,nan,3,4,5", "NaN or infinite"),
    ("1,1,2,inf,4,5", "NaN or infinite"),
])
def test_read_mot_file_bad_rows(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"1,7,1,1,1,1\n{line}\n")
    with pytest.raises(ValueError, match=f"bad.txt: line 2: .*{message}"):
        read_mot_file(path)


def test_write_results_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.integers(1, 20, 50), rng.integers(0, 9, 50), np.round(rng.uniform(0, 500, (50, 2)), 2),
                            np.round(rng.uniform(1, 90, (50, 2)), 2), np.round(rng.random(50), 4)])
    path = write_results(tmp_path / "out" / "data" / "seq.txt", rows)
    first = path.read_text().splitlines()[0].split(",")
    assert len(first) == 10 and first[7:] == ["-1", "-1", "-1"] and "." not in first[0] + first[1]
    back = read_mot_file(path)
    order = np.lexsort((rows[:, 1], rows[:, 0]))
    np.testing.assert_allclose(back[:, :7], rows[order], atol=1e-9)
    assert (back[:, 7:] == -1).all()
    write_results(tmp_path / "six.txt", rows[:, :6])
    assert (read_mot_file(tmp_path / "six.txt")[:, 6] == -1).all()
    assert read_mot_file(write_results(tmp_path / "empty.txt", np.zeros((0, 10)))).shape == (0, 10)
    with pytest.raises(ValueError, match="row 0: NaN"):
        write_results(tmp_path / "nan.txt", [[1, 1, np.nan, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\(N, >= 6\)"):
        write_results(tmp_path / "short.txt", [[1, 1, 0, 0, 1]])


def test_rows_by_frame():
    rows = np.array([[3, 1, 0], [1, 5, 0], [3, 0, 1], [1, 2, 0]], float)
    groups = rows_by_frame(rows)
    assert list(groups) == [1, 3]
    np.testing.assert_array_equal(groups[1][:, 1], [5, 2])  # input order kept within a frame
    np.testing.assert_array_equal(groups[3][:, 1], [1, 0])
    assert rows_by_frame(np.zeros((0, 10))) == {}


def _sequence(folder: Path, info: SeqInfo) -> Path:
    write_seqinfo(folder, info)
    (folder / "gt").mkdir(parents=True)
    (folder / "gt" / "gt.txt").write_text("1,1,0,0,4,4,1,1,1\n3,1,1,1,4,4,1,1,1\n")
    return folder


def test_sequence_folders_and_frames(tmp_path):
    cv2 = pytest.importorskip("cv2")
    seq = _sequence(tmp_path / "data" / "train" / "A", SeqInfo("A", 10.0, 2, 8, 6, im_ext=".png"))
    (tmp_path / "data" / "test" / "B" / "det").mkdir(parents=True)
    (tmp_path / "data" / "test" / "B" / "det" / "det.txt").write_text("4,-1,0,0,2,2,0.9,-1,-1,-1\n")
    found = find_sequences(tmp_path / "data")
    assert found == [tmp_path / "data" / "test" / "B", seq]
    assert find_sequences(seq) == [seq]
    loaded = read_sequence(seq)
    assert isinstance(loaded, MotSequence) and loaded.det is None and loaded.gt.shape == (2, 10)
    assert loaded.image_path(2) == seq / "img1" / "000002.png"
    with pytest.raises(FileNotFoundError, match="no images"):
        next(loaded.frames())
    (seq / "img1").mkdir()
    for frame in (1, 2):
        cv2.imwrite(str(loaded.image_path(frame)), np.full((6, 8, 3), frame * 40, np.uint8))
    frames = list(loaded.frames())
    assert [f for f, _ in frames] == [1, 2] and frames[1][1].shape == (6, 8, 3) and frames[1][1].dtype == np.uint8
    assert (frames[1][1] == 80).all()
    b = read_sequence(tmp_path / "data" / "test" / "B", default_frame_rate=14)
    assert b.info == SeqInfo("B", 14.0, 4, 0, 0) and b.gt is None and b.det.shape == (1, 10)
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no MOTChallenge sequences"):
        find_sequences(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a MOTChallenge sequence"):
        read_sequence(tmp_path / "empty" / "x")


def test_real_mot15(mot15):
    names = [p.name for p in find_sequences(mot15)]
    assert names == ["ETH-Sunnyday", "KITTI-17", "TUD-Campus", "TUD-Stadtmitte"]
    campus = read_sequence(mot15 / "TUD-Campus")
    assert campus.info == SeqInfo("TUD-Campus", 25.0, 71, 0, 0)
    assert campus.gt.shape == (359, 10) and campus.det.shape == (321, 10)
    assert set(rows_by_frame(campus.gt)) == set(range(1, 72))
    assert (campus.det[:, 1] == -1).all() and campus.det[:, 6].max() <= 1
    sunny = read_sequence(mot15 / "ETH-Sunnyday")
    assert sunny.gt is None and sunny.info.length == int(sunny.det[:, 0].max())
    with pytest.raises(FileNotFoundError, match="TUD-Campus: no images"):
        next(campus.frames())
