"""Write failures on a real limit: a subprocess whose file-size limit (RLIMIT_FSIZE) is below what it writes.

The kernel refuses the write (EFBIG, as a full disk refuses with ENOSPC): the previous file stays
whole and loadable, no temporary file is left, and the error names the path and the OS's reason.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent("""
    import resource, signal, sys, torch
    from pathlib import Path
    from mlplab.checkpointing import AtomicCheckpointIO
    from mlplab.data.idx import atomic_write_bytes
    from mlplab.errors import DataError

    folder = Path(sys.argv[1])
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(10)}, folder / "last.ckpt")  # the file to keep
    atomic_write_bytes(folder / "predictions.csv", b"name,prediction\\n")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    for write in (
        lambda: AtomicCheckpointIO().save_checkpoint({"w": torch.ones(100_000)}, folder / "last.ckpt"),
        lambda: atomic_write_bytes(folder / "predictions.csv", b"x" * 100_000),
        lambda: atomic_write_bytes(folder / "new.csv", b"x" * 100_000),
    ):
        try:
            write()
        except DataError as err:
            print(err)
""")


def test_a_write_over_the_file_size_limit_keeps_the_previous_file_and_names_the_reason(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"cannot write {tmp_path / 'last.ckpt'}: File too large (EFBIG); the previous last.ckpt is unchanged.",
        f"cannot write {tmp_path / 'predictions.csv'}: File too large (EFBIG); the previous predictions.csv is unchanged.",
        f"cannot write {tmp_path / 'new.csv'}: File too large (EFBIG); no new.csv was written.",
    ]
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(10))
    assert (tmp_path / "predictions.csv").read_text() == "name,prediction\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "predictions.csv"]  # no temporary file left
