"""A local multi-worker run keeps PyTorch's rendezvous (and every other socket its workers open) on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import proc_sockets
import pytest
from ray import cloudpickle  # Ray's own copy: the one that pickles tasks

from celltune.trainables.loopback_rendezvous import is_loopback

pytestmark = pytest.mark.ray
# Ray workers cannot import test modules: ship this one and its helper by value with the worker function.
cloudpickle.register_pickle_by_value(proc_sockets)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _worker(config):
    import torch
    import torch.distributed as dist
    from ray import train

    total = torch.ones(1) * (train.get_context().get_world_rank() + 1)
    dist.all_reduce(total)
    record = {"sum": float(total.item()), "listening": proc_sockets.listening_addresses()}
    Path(config["out"], f"rank{train.get_context().get_world_rank()}.json").write_text(json.dumps(record))


def test_a_two_worker_group_rendezvouses_on_loopback_only(tmp_path, ray_session):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from celltune.trainables.loopback_rendezvous import LoopbackTorchConfig

    TorchTrainer(_worker, train_loop_config={"out": str(tmp_path)}, torch_config=LoopbackTorchConfig(backend="gloo"),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name="loopback", storage_path=str(tmp_path / "runs"))).fit()
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["sum"] for r in records] == [3.0, 3.0]  # the group works: 1 + 2 on both ranks
    assert records[0]["listening"], "rank 0 should at least serve the store"
    for rank, record in enumerate(records):
        exposed = [host for host in record["listening"] if not is_loopback(host)]
        assert not exposed, f"rank {rank} listens on {exposed}"


@pytest.mark.parametrize(("address", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                    ("10.0.0.5", False), ("node-3", False)])
def test_which_master_addresses_count_as_this_machine(address, loopback):
    assert is_loopback(address) is loopback
