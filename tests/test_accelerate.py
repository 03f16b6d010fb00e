"""Multi-process VAG-DPO: ``accelerate launch --multi_gpu --num_processes 2`` on a machine without
a GPU (two CPU processes, DDP over gloo) trains the example with the same losses as one process on
the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_vagdpo.py"
ARGS = ["--steps", "2", "--batch-size", "4", "--lr", "5e-3"]


def run(command: list[str], log: Path) -> list[dict]:
    """Run ``command`` in its own process group, killed whole (every rank) if it outlives the timeout."""
    process = subprocess.Popen(command + ARGS + ["--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"{command[:4]} did not finish in 300 s: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_with_the_losses_of_one_on_the_same_global_batch(tmp_path):
    one = run([sys.executable, str(EXAMPLE)], tmp_path / "one.jsonl")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(EXAMPLE)]  # fmt: skip
    two = run(launch, tmp_path / "two.jsonl")
    assert [r["processes"] for r in one] == [1, 1] and [r["processes"] for r in two] == [2, 2]
    assert one[0]["loss"] == pytest.approx(0.6931, abs=1e-4) and one[1]["loss"] < one[0]["loss"]  # the step trained
    for a, b in zip(one, two):  # step 2 follows DDP's averaged gradient: the same update as one process
        for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert b[name] == pytest.approx(a[name], abs=1e-5), (a["step"], name)
