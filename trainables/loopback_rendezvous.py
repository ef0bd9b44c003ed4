"""PyTorch's distributed rendezvous kept on loopback when every worker runs on this machine.

Ray Train's torch backend has rank 0 create torch's ``TCPStore``, whose server listens on every interface
(``*:PORT``) and has no authentication: anyone who reaches the port during a run can join or poison the process
group. torch gives the store no bind address, but it accepts a socket that is already listening
(``master_listen_fd``). So on a local cluster (Ray's master address is a loopback one) rank 0 binds the socket to
127.0.0.1 itself, and every rank joins the process group through that store; on a real cluster Ray's own set-up
runs unchanged (the workers must reach rank 0 over the network there).

This leans on Ray Train's private ``_TorchBackend`` (the one hook Ray offers for the rendezvous); its test runs
a two-worker group and lists the workers' listening sockets.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.utils import get_address_and_port
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_STORE: dist.TCPStore | None = None  # rank 0's store server: lives as long as the worker process
_LISTENER: socket.socket | None = None


class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous listens on 127.0.0.1 when the cluster is this machine."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        master_addr, _ = worker_group.execute_single(0, get_address_and_port)
        if isinstance(worker_group, V1WorkerGroup) or not is_loopback(master_addr) or backend_config.backend is None:
            return super().on_start(worker_group, backend_config)
        worker_group.execute(_set_torch_distributed_env_vars)
        size = len(worker_group)
        port = worker_group.execute_single(0, _serve_store, world_size=size, timeout_s=backend_config.timeout_s)
        ray.get([worker_group.execute_single_async(rank, _join_process_group, backend=backend_config.backend,
                                                   world_rank=rank, world_size=size, port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(size)])


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _serve_store(world_size: int, timeout_s: float) -> int:
    """Rank 0: a store server on a socket bound to 127.0.0.1; returns its port."""
    global _STORE, _LISTENER
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    _LISTENER = listener
    _STORE = dist.TCPStore("127.0.0.1", listener.getsockname()[1], world_size, is_master=True,
                           timeout=timedelta(seconds=timeout_s), wait_for_workers=False,
                           master_listen_fd=listener.fileno())
    return listener.getsockname()[1]


def _join_process_group(backend: str, world_rank: int, world_size: int, port: int, timeout_s: float) -> None:
    timeout = timedelta(seconds=timeout_s)
    store = _STORE if world_rank == 0 else dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                                                          timeout=timeout)
    if backend == "nccl":  # as Ray does: fail on hung collectives instead of waiting forever
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if os.path.isdir("/sys/class/net/lo"):  # Linux: gloo's own pairs listen on loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)
