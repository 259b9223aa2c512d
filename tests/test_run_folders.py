"""Run-folder rules as plain functions: claiming version_N, finding last.ckpt, the run that wrote a checkpoint."""

import os
import threading

import pytest

from mlplab.cli.run_folders import (
    claim_version,
    first_missing_folder,
    is_first_process,
    newest_last_checkpoint,
    remove_empty_parents,
    training_run_of,
)


def test_claims_take_the_next_free_version_and_never_the_same_one(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_7").mkdir()
    (tmp_path / "version_x").mkdir()  # not a version folder
    assert claim_version(tmp_path) == 8
    claimed = []
    threads = [threading.Thread(target=lambda: claimed.append(claim_version(tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(9, 17))  # eight claims at once: eight distinct folders


def test_newest_last_checkpoint_is_the_most_recently_written(tmp_path):
    assert newest_last_checkpoint(tmp_path) is None
    for version, mtime in ((0, 100), (3, 300), (2, 200)):
        folder = tmp_path / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
        os.utime(folder / "last.ckpt", (mtime, mtime))
    (tmp_path / "elsewhere" / "checkpoints").mkdir(parents=True)
    (tmp_path / "elsewhere" / "checkpoints" / "last.ckpt").write_bytes(b"x")  # not a version folder: ignored
    assert newest_last_checkpoint(tmp_path) == (tmp_path / "version_3" / "checkpoints" / "last.ckpt", 3)


def test_the_run_of_a_checkpoint_is_the_folder_with_its_hparams(tmp_path):
    run = tmp_path / "mnist" / "version_4"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert training_run_of(run / "checkpoints" / "best.ckpt") is None  # no hparams.yaml: not a logged run
    (run / "hparams.yaml").write_text("{}")
    assert training_run_of(run / "checkpoints" / "best.ckpt") == run.resolve()
    (tmp_path / "loose.ckpt").write_bytes(b"x")
    assert training_run_of(tmp_path / "loose.ckpt") is None


@pytest.mark.parametrize(
    ("environ", "first"),
    [
        ({}, True),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),  # a rank Lightning's launcher started
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # the second node of a multi-node run
        ({"RANK": "3", "GROUP_RANK": "1"}, False),  # torchrun
        ({"SLURM_PROCID": "2"}, False),  # srun's third task
    ],
)
def test_only_the_first_process_of_a_run_claims_its_folder(environ, first):
    assert is_first_process(environ) is first


def test_a_refused_run_removes_only_the_empty_folders_its_claim_created(tmp_path):
    (tmp_path / "logs" / "other").mkdir(parents=True)
    root = tmp_path / "logs" / "tiny" / "sub"
    assert first_missing_folder(root) == tmp_path / "logs" / "tiny"
    version = claim_version(root)
    (root / f"version_{version}").rmdir()
    remove_empty_parents(root / f"version_{version}", tmp_path / "logs" / "tiny")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["other"]  # logs/ existed before: it stays
    assert first_missing_folder(tmp_path / "logs") is None
