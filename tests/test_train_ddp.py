"""DistributedDataParallel: 2 gloo processes on CPU train like one process with the same global batch.

BatchNorm in training mode normalises with per-process batch statistics, so DDP and a single
process cannot agree to 1e-5 on a net whose BN trains (SyncBatchNorm needs a GPU). The test
therefore fine-tunes with the backbone frozen (its BN in eval mode) but still running every step
(no feature cache): sharding, gradient all-reduce, loss averaging and rank-0 checkpointing are
all exercised, and the result must match to 1e-5. (Augmentation is off: its random draws are
per process by design.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from _train_fixtures import tensor_data, tiny_config
from resnets.train import train
from resnets.train.distributed import free_port
from resnets.weights import load_weights_file


def _worker(rank: int, world_size: int, port: int, out: str, weights: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    train(_config(Path(out), weights), data=tensor_data())


def _config(out: Path, weights: str):
    return tiny_config(out, model=None, weights=weights, freeze="backbone", feature_cache=False, epochs=1,
                       batch_size=8, augment="none", lr=0.2)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    from test_train import _pretrained

    weights = str(_pretrained(tmp_path))
    single = train(_config(tmp_path / "single", weights), data=tensor_data())
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "ddp"), weights), nprocs=2, join=True)
    a = load_weights_file(single.weights).state_dict
    b = load_weights_file(tmp_path / "ddp" / "weights.safetensors").state_dict
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
