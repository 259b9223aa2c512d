"""DDP on CPU (gloo, 2 processes) through the real CLI: distinct shards, synchronised metrics, same checkpoint.

With 2 ranks at batch B, rank r's i-th batch is ``perm[r::2][iB:(i+1)B]``; the two together are
``perm[2iB:2(i+1)B]``, one process's i-th batch at batch 2B. DDP averages the two ranks' mean
gradients, which is the mean gradient over those 2B samples, so both runs take the same steps:
the weights agree up to float summation order (tolerance 1e-5) and the synchronised metrics match.
"""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REAL_DATA_DIR, ROOT

MLPLAB = str(Path(sys.executable).parent / "mlplab")
RESULT = re.compile(r"^mlplab: test/acc=(?P<acc>[0-9.]+) test/loss=(?P<loss>[0-9.]+) ckpt=(?P<ckpt>\S+)$", re.MULTILINE)


def fit(tmp_path: Path, name: str, *extra: str) -> dict:
    command = [
        MLPLAB,
        "fit",
        "--config",
        "configs/mnist.yaml",
        f"--data.data_dir={REAL_DATA_DIR}",
        # 2 epochs x 48 steps (3 fetches of 16 batches): Adam amplifies the two runs' float summation differences
        # over hundreds of steps (about 1e-2 after 384), so the comparison stays short enough for a 1e-5 tolerance
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=48",
        "--model.steps_per_call=16",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
        "--model.dropout=0.0",
        f"--trainer.logger.init_args.save_dir={tmp_path / name}",
        *extra,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    match = RESULT.search(result.stdout)
    assert match, result.stdout[-2000:]
    return {"acc": float(match["acc"]), "loss": float(match["loss"]), "last": Path(match["ckpt"]).parent / "last.ckpt"}


@pytest.mark.e2e
def test_ddp_two_cpu_processes_match_one_process_with_twice_the_batch(real_mnist, tmp_path):
    ddp = fit(tmp_path, "ddp", "--trainer.strategy=ddp", "--trainer.devices=2", "--data.batch_size=64")
    single = fit(tmp_path, "single", "--trainer.devices=1", "--data.batch_size=128")
    ddp_ckpt = torch.load(ddp["last"], weights_only=True)
    single_ckpt = torch.load(single["last"], weights_only=True)
    assert ddp_ckpt["global_step"] == single_ckpt["global_step"] == 2 * 48  # epochs x limit_train_batches
    for key, value in single_ckpt["state_dict"].items():
        assert torch.allclose(ddp_ckpt["state_dict"][key], value, atol=1e-5, rtol=1e-4), key
    # test metrics are synchronised over both ranks' halves of the test set: equal to one process's
    assert ddp["acc"] == pytest.approx(single["acc"], abs=2e-4)
    assert ddp["loss"] == pytest.approx(single["loss"], abs=2e-4)


def two_nodes(tmp_path: Path, port: int, *extra: str) -> list[subprocess.Popen]:
    """The README's multi-node command as two "nodes" on this machine: one process each, NODE_RANK 0 and 1."""
    command = [
        MLPLAB, "fit", "--config", "configs/mnist.yaml", f"--data.data_dir={REAL_DATA_DIR}", "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=48", "--model.steps_per_call=16", "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu", "--model.dropout=0.0", "--data.batch_size=64", "--trainer.strategy=ddp",
        "--trainer.devices=1", "--trainer.num_nodes=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'nodes'}", *extra,
    ]  # fmt: skip
    environments = [{**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank)} for rank in (0, 1)]
    return [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for env in environments]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
def test_two_nodes_match_two_processes_on_one_node_and_share_one_run_folder(real_mnist, tmp_path):
    single_node = fit(tmp_path, "ddp", "--trainer.strategy=ddp", "--trainer.devices=2", "--data.batch_size=64")
    nodes = two_nodes(tmp_path, free_port())
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(p.name for p in (tmp_path / "nodes" / "mnist").iterdir()) == ["version_0"]  # one run, no empty folder
    nodes_ckpt = torch.load(tmp_path / "nodes/mnist/version_0/checkpoints/last.ckpt", weights_only=True)
    single_ckpt = torch.load(single_node["last"], weights_only=True)
    assert nodes_ckpt["global_step"] == single_ckpt["global_step"] == 96
    for key, value in single_ckpt["state_dict"].items():  # (float summation order differs with the thread counts)
        assert torch.allclose(nodes_ckpt["state_dict"][key], value, atol=1e-5, rtol=1e-4), key
    assert float(RESULT.search(outputs[0][0])["acc"]) == pytest.approx(single_node["acc"], abs=2e-4)


@pytest.mark.e2e
def test_a_killed_node_ends_the_other_with_a_clear_error_and_both_resume_from_one_checkpoint(real_mnist, tmp_path):
    nodes = two_nodes(tmp_path, free_port())
    last = tmp_path / "nodes/mnist/version_0/checkpoints/last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline:  # the end of epoch 0
        time.sleep(0.2)
    nodes[1].kill()
    _, stderr = nodes[0].communicate(timeout=180)  # an error, not a hang
    nodes[1].communicate()
    assert nodes[0].returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("mlplab: error:")]
    assert len(errors) == 1 and "another process of this distributed run stopped" in errors[0], stderr[-3000:]
    resumed = two_nodes(tmp_path, free_port(), "--ckpt_path=last")
    outputs = [node.communicate(timeout=600) for node in resumed]
    assert [node.returncode for node in resumed] == [0, 0], [err[-2000:] for _, err in outputs]
    for out, err in outputs:  # both nodes resumed from the same file, into the same run
        assert f"resuming from {last}" in out + err
    assert torch.load(last, weights_only=True)["global_step"] == 96
    assert sorted(p.name for p in (tmp_path / "nodes" / "mnist").iterdir()) == ["version_0"]
