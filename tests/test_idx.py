"""IDX reading/writing: both encodings, and clear errors for every kind of bad file."""

import gzip

import pytest
import torch

from mlplab.data import read_idx, write_idx
from mlplab.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_roundtrip_raw_and_gzip(tmp_path, suffix):
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    path = write_idx(tmp_path / f"images{suffix}", images)
    assert torch.equal(read_idx(path), images)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_write_leaves_no_temporary_file(tmp_path):
    write_idx(tmp_path / "labels", torch.arange(10, dtype=torch.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["labels"]


def test_wrong_magic_number_is_named(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match=r"bad is not an IDX file: its magic number is 12340801"):
        read_idx(path)


def test_truncated_file_reports_sizes(tmp_path):
    path = write_idx(tmp_path / "images", torch.zeros(4, 28, 28, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"holds 3036 data bytes but its header \(shape \(4, 28, 28\)\) announces 3136"):
        read_idx(path)


def test_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(b"\x00\x00\x08\x01" + (0).to_bytes(4, "big"))
    with pytest.raises(DataError, match=r"labels.gz is named .gz but is not a gzip file"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + bytes(100))[:-12])
    with pytest.raises(DataError, match=r"damaged or truncated gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        read_idx(tmp_path / "nope")


def test_empty_shape_too_large_to_index_is_a_data_error(tmp_path):
    # found by the fuzzer: float64, 3 dimensions (956301312, 1207959552, 0): zero data bytes, as announced, but numpy
    # cannot build an array of that shape
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x00\x00\x0e\x03" + b"\x39\x00\x00\x00" + b"\x48\x00\x00\x00" + b"\x00\x00\x00\x00")
    with pytest.raises(DataError, match=r"x.idx is corrupt: its header's shape \(956301312, 1207959552, 0\) cannot be held"):
        read_idx(path)


def test_kept_decoded_files_are_read_once_served_as_copies_and_read_again_when_changed(tmp_path, monkeypatch):
    from mlplab.data import idx

    monkeypatch.setattr(idx, "_DECODED", None)
    path = write_idx(tmp_path / "images.gz", torch.arange(24, dtype=torch.uint8).view(2, 3, 4))
    idx.keep_decoded_files()
    first = read_idx(path)
    first.zero_()  # a caller's tensor is its own: the kept array stays as read
    decodes, decode = [], idx._decode
    monkeypatch.setattr(idx, "_decode", lambda p: decodes.append(p) or decode(p))
    assert torch.equal(read_idx(path), torch.arange(24, dtype=torch.uint8).view(2, 3, 4)) and decodes == []
    write_idx(path, torch.ones(5, 2, dtype=torch.uint8))  # changed on disk: read anew
    assert torch.equal(read_idx(path), torch.ones(5, 2, dtype=torch.uint8)) and decodes == [path]
