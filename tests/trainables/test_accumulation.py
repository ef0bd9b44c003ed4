"""Scheme acc: one optimizer step over several datasets' minibatches, alone and under two DDP workers."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from celltune.trainables.losses import build_loss
from celltune.trainables.train_loop import optimizer_step


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def _batches(seed: int = 1, n_datasets: int = 3, batch: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(batch, 1, 12, 12, generator=generator) + index,
             "target": torch.randint(0, 3, (batch, 12, 12), generator=generator)} for index in range(n_datasets)]


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


class _NoStep(torch.optim.SGD):
    def step(self, closure=None):  # keep the gradients of the round for inspection
        return None


def test_accumulated_gradient_is_the_sum_of_per_dataset_gradients():
    loss_fn = build_loss("ce")
    batches = _batches()
    per_dataset = []
    for batch in batches:
        model = _model()
        loss_fn(model(batch["image"]), batch["target"]).total.backward()
        per_dataset.append(_grads(model))
    model = _model()
    terms = optimizer_step(model, loss_fn, batches, optimizer=_NoStep(model.parameters(), lr=0.1),
                           scaler=torch.amp.GradScaler("cpu", enabled=False))
    for accumulated, *parts in zip(_grads(model), *per_dataset, strict=True):
        torch.testing.assert_close(accumulated, sum(parts), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        expected_total = sum(float(loss_fn(_model()(b["image"]), b["target"]).total) for b in batches)
    assert terms["total"] == pytest.approx(expected_total, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        # Each rank gets its half of every dataset's minibatch (its shard of frames).
        halves = [{k: v[rank * 2:(rank + 1) * 2] for k, v in batch.items()} for batch in _batches()]
        optimizer_step(model, build_loss("ce", class_weights=(1, 1, 1)), halves, optimizer=optimizer,
                       scaler=torch.amp.GradScaler("cpu", enabled=False))
        if rank == 0:
            queue.put([p.detach().numpy().copy() for p in model.module.parameters()])  # by value, not shm
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_workers_make_the_same_update_as_one_worker_on_the_same_data():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer_step(model, build_loss("ce", class_weights=(1, 1, 1)), _batches(), optimizer=optimizer,
                   scaler=torch.amp.GradScaler("cpu", enabled=False))
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), queue), nprocs=2, join=True, start_method="spawn")
    ddp_params = [torch.from_numpy(a) for a in queue.get()]
    for single, distributed in zip(model.parameters(), ddp_params, strict=True):
        torch.testing.assert_close(distributed, single.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ddp_params[0], _model().state_dict()["0.weight"])  # the step did move the weights
