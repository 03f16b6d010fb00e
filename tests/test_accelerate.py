"""Multi-process VAG-DPO: ``accelerate launch --multi_gpu --num_processes 2`` on a machine without
a GPU (two CPU processes, DDP over gloo) trains the example with the same losses as one process on
the same global batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_vagdpo.py"
TIMEOUT = 120  # seconds; a launch takes about 5
# One thread in every process, as torch's launcher gives each rank: the same arithmetic per sample in
# both runs (AdamW's first step turns a rounding difference in a near-zero gradient into a whole step).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["--steps", "2", "--batch-size", "4", "--lr", "5e-3"]


def run(command: Callable[[], list[str]], log: Path, attempts: int = 2, timeout: float = TIMEOUT) -> list[dict]:
    """Run ``command`` with a timeout, every process it started killed if it outlives it.

    torch's launcher starts each rank in a session of its own, so killing the launcher's process group
    leaves the ranks alive; they are found as its descendants instead. Output goes to a file, not a
    pipe a surviving rank could hold open. A gloo process group occasionally hangs in teardown after
    the work is done (pytorch/pytorch#75097), so a launch that times out is tried once more.
    """
    out = log.with_suffix(".out")
    for attempt in range(1, attempts + 1):
        with out.open("w") as sink:
            process = subprocess.Popen(command() + ARGS + ["--log", str(log)], stdout=sink, stderr=subprocess.STDOUT,
                                       env=ENV, start_new_session=True)  # fmt: skip
            try:
                process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                kill_tree(process)
        if attempt == attempts:
            pytest.fail(f"{command()[:4]} did not finish in {timeout} s, {attempts} times: {out.read_text()[-3000:]}")
    assert process.returncode == 0, out.read_text()[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and all its descendants, whatever session they moved to, and reap it."""
    psutil = pytest.importorskip("psutil")  # a dependency of accelerate
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_with_the_losses_of_one_on_the_same_global_batch(tmp_path):
    one = run(lambda: [sys.executable, str(EXAMPLE)], tmp_path / "one.jsonl")
    two = run(lambda: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(free_port()), str(EXAMPLE)], tmp_path / "two.jsonl")  # fmt: skip
    assert [r["processes"] for r in one] == [1, 1] and [r["processes"] for r in two] == [2, 2]
    assert one[0]["loss"] == pytest.approx(0.6931, abs=1e-4) and one[1]["loss"] < one[0]["loss"]  # the step trained
    for a, b in zip(one, two):  # step 2 follows DDP's averaged gradient: the same update as one process
        for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert b[name] == pytest.approx(a[name], abs=1e-5), (a["step"], name, one, two)


def test_a_launch_that_hangs_is_killed_with_the_processes_it_moved_to_other_sessions(tmp_path):
    """What keeps a hung rank from hanging the suite: a grandchild in a session of its own, holding
    the output open, is killed along with its parent once the timeout passes."""
    psutil = pytest.importorskip("psutil")
    pids = tmp_path / "pids"
    hang = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
            f"open({str(pids)!r}, 'w').write(str(c.pid)); time.sleep(600)")  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match="did not finish in 2 s, 1 times"):
        run(lambda: [sys.executable, "-c", hang], tmp_path / "log.jsonl", attempts=1, timeout=2)
    grandchild = int(pids.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
