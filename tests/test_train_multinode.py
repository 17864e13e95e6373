"""Several machines: two torchrun "nodes" (one process each, c10d rendezvous on 127.0.0.1) train like one process.

Each node is its own ``torchrun --nnodes 2 --nproc-per-node 1`` process running the unchanged
``resnets train`` command, exactly as on a cluster. As in test_train_ddp, the backbone is
frozen (BatchNorm in eval mode, but every step still runs through it: no feature cache) and
augmentation is off, so the two-node weights after one epoch must equal a single process's with
the same global batch to 1e-5. The images stream from WebDataset shards (``--stream``, one
loader worker), so the exact-resume sampler's split of a shard set over ranks is exercised too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_fixtures import write_folder_dataset
from resnets.data.pack import pack_wds
from resnets.train.distributed import free_port
from resnets.weights import load_weights_file

SRC = Path(__file__).resolve().parents[1] / "src"


def _train_args(data: Path, weights: Path, out: Path) -> list[str]:
    return ["-m", "resnets", "train", "--data", str(data), "--stream", "--workers", "1", "--weights", str(weights),
            "--freeze", "backbone", "--no-feature-cache", "--epochs", "1", "--batch-size", "8", "--augment", "none", "--lr", "0.2",
            "--img-size", "16", "--device", "cpu", "--seed", "0", "--no-progress", "--out", str(out)]


def _env() -> dict[str, str]:
    path = f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_nodes_match_one_process(tmp_path):
    from test_train import _pretrained

    data = tmp_path / "shards"  # streamed from WebDataset shards, split over the ranks by the sampler
    pack_wds(write_folder_dataset(tmp_path / "data", {"train": 8, "val": 2}), data, shard_size=10, progress=False)
    weights = _pretrained(tmp_path)
    single = subprocess.run([sys.executable, *_train_args(data, weights, tmp_path / "single")], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]

    outputs = _two_nodes(_train_args(data, weights, tmp_path / "ddp"))
    assert all(code == 0 for code, _ in outputs), "\n".join(out[-2000:] for _, out in outputs)
    a = load_weights_file(tmp_path / "single" / "weights.safetensors").state_dict
    b = load_weights_file(tmp_path / "ddp" / "weights.safetensors").state_dict
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    # the two nodes really formed one group of 2 (not two runs of 1): an odd global batch is refused
    odd = _train_args(data, weights, tmp_path / "odd")
    odd[odd.index("--batch-size") + 1] = "7"
    outputs = _two_nodes(odd)
    assert all(code != 0 and "must divide evenly over 2 processes" in out for code, out in outputs)


def _two_nodes(train_args: list[str]) -> list[tuple[int, str]]:
    """Run ``train_args`` as two torchrun nodes of one process each; (exit status, output) of each."""
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "multinode-test", *train_args],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    return [(node.returncode, output) for node, output in zip(nodes, outputs)]
