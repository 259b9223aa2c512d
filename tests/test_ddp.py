"""DDP on CPU (gloo, 2 processes) through the real CLI: distinct shards, synchronised metrics, same checkpoint.

With 2 ranks at batch B, rank r's i-th batch is ``perm[r::2][iB:(i+1)B]``; the two together are
``perm[2iB:2(i+1)B]``, one process's i-th batch at batch 2B. DDP averages the two ranks' mean
gradients, which is the mean gradient over those 2B samples, so both runs take the same steps:
the weights agree up to float summation order (tolerance 1e-5) and the synchronised metrics match.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import MLPLAB, REAL_DATA_DIR, RESULT_LINE, ROOT, free_port, once_per_session
from tests.test_faults import SIGNAL_CALLBACK


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
    match = RESULT_LINE.search(result.stdout)
    assert match, result.stdout[-2000:]
    return {"acc": float(match["acc"]), "loss": float(match["loss"]), "last": Path(match["ckpt"]).parent / "last.ckpt"}


@pytest.fixture
def two_processes(real_mnist, tmp_path_factory) -> dict:
    """Two DDP processes on one node at batch 64: the run both tests compare with, trained once per test session."""

    def produce(folder: Path) -> dict:
        run = fit(folder, "ddp", "--trainer.strategy=ddp", "--trainer.devices=2", "--data.batch_size=64")
        return {**run, "last": str(run["last"])}

    return once_per_session(tmp_path_factory, "two_ddp_processes", produce)


@pytest.mark.e2e
def test_ddp_two_cpu_processes_match_one_process_with_twice_the_batch(two_processes, tmp_path):
    single = fit(tmp_path, "single", "--trainer.devices=1", "--data.batch_size=128")
    ddp_ckpt = torch.load(two_processes["last"], weights_only=True)
    single_ckpt = torch.load(single["last"], weights_only=True)
    assert ddp_ckpt["global_step"] == single_ckpt["global_step"] == 2 * 48  # epochs x limit_train_batches
    for key, value in single_ckpt["state_dict"].items():
        assert torch.allclose(ddp_ckpt["state_dict"][key], value, atol=1e-5, rtol=1e-4), key
    # test metrics are synchronised over both ranks' halves of the test set: equal to one process's
    assert two_processes["acc"] == pytest.approx(single["acc"], abs=2e-4)
    assert two_processes["loss"] == pytest.approx(single["loss"], abs=2e-4)


def two_nodes(save_dir: Path, *extra: str) -> tuple[list[subprocess.Popen], list[tuple[str, str]], Path]:
    """The README's multi-node command as two "nodes" on this machine (one process each, NODE_RANK 0 and 1), run to their end.

    Returns the processes, their (stdout, stderr) and the logger's save_dir. The rendezvous port is picked free and
    released before node 0 binds it: should another process take it meanwhile (node 0 fails with EADDRINUSE), the
    pair is started again on a new port, logging under a new save_dir (the failed start may have claimed a run folder).
    """
    command = [
        MLPLAB, "fit", "--config", "configs/mnist.yaml", f"--data.data_dir={REAL_DATA_DIR}", "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=48", "--model.steps_per_call=16", "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu", "--model.dropout=0.0", "--data.batch_size=64", "--trainer.strategy=ddp",
        "--trainer.devices=1", "--trainer.num_nodes=2", *extra,
    ]  # fmt: skip
    for attempt in range(3):
        port = free_port()
        environments = [
            {**os.environ, "PYTHONPATH": str(save_dir.parent), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank)}
            for rank in (0, 1)
        ]
        nodes = [
            subprocess.Popen(
                [*command, f"--trainer.logger.init_args.save_dir={save_dir}"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for env in environments
        ]
        first = nodes[0].communicate(timeout=600)
        if nodes[0].returncode != 0 and "EADDRINUSE" in first[1] and attempt < 2:
            nodes[1].kill()
            nodes[1].communicate()
            save_dir = save_dir.with_name(f"{save_dir.name}_port_taken_{attempt}")
            continue
        return nodes, [first, nodes[1].communicate(timeout=600)], save_dir
    raise AssertionError("unreachable")


@pytest.mark.e2e
def test_two_nodes_match_two_processes_on_one_node_and_share_one_run_folder(two_processes, tmp_path):
    nodes, outputs, save_dir = two_nodes(tmp_path / "nodes")
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(p.name for p in (save_dir / "mnist").iterdir()) == ["version_0"]  # one run, no empty folder
    nodes_ckpt = torch.load(save_dir / "mnist/version_0/checkpoints/last.ckpt", weights_only=True)
    single_ckpt = torch.load(two_processes["last"], weights_only=True)
    assert nodes_ckpt["global_step"] == single_ckpt["global_step"] == 96
    for key, value in single_ckpt["state_dict"].items():  # (float summation order differs with the thread counts)
        assert torch.allclose(nodes_ckpt["state_dict"][key], value, atol=1e-5, rtol=1e-4), key
    assert float(RESULT_LINE.search(outputs[0][0])["acc"]) == pytest.approx(two_processes["acc"], abs=2e-4)


@pytest.mark.e2e
def test_a_killed_node_ends_the_other_with_a_clear_error_and_both_resume_from_one_checkpoint(real_mnist, tmp_path):
    (tmp_path / "faulthelpers.py").write_text(SIGNAL_CALLBACK)
    # node 1 SIGKILLs itself as the batch of step 60 starts: in epoch 1, after epoch 0's last.ckpt (step 48) was written
    kill_node_1 = ["--trainer.callbacks+=faulthelpers.SignalAtStep", "--trainer.callbacks.step=60", "--trainer.callbacks.rank=1"]
    nodes, outputs, save_dir = two_nodes(tmp_path / "nodes", *kill_node_1)
    stderr = outputs[0][1]
    assert nodes[1].returncode == -signal.SIGKILL and nodes[0].returncode == 1, stderr[-3000:]  # an error, not a hang
    errors = [line for line in stderr.splitlines() if line.startswith("mlplab: error:")]
    assert len(errors) == 1 and "another process of this distributed run stopped" in errors[0], stderr[-3000:]
    last = save_dir / "mnist/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 48
    resumed, outputs, resumed_dir = two_nodes(save_dir, "--ckpt_path=last")
    assert resumed_dir == save_dir and [node.returncode for node in resumed] == [0, 0], [err[-2000:] for _, err in outputs]
    for out, err in outputs:  # both nodes resumed from the same file, into the same run
        assert f"resuming from {last}" in out + err
    assert torch.load(last, weights_only=True)["global_step"] == 96
    assert sorted(p.name for p in (save_dir / "mnist").iterdir()) == ["version_0"]
