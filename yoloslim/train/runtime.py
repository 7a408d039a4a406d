"""Where and how a training run executes: DDP ranks, the device, seeds and RNG state, the
resumable sampler, and Ctrl-C handling. Nothing here knows what is being trained."""
import os
import random
import signal
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from yoloslim.errors import SlimError


class Dist:
    """Rank / world size when launched by torchrun, and the process group it needs."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.master = self.rank == 0

    def init(self, device):
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def any(self, flag):
        """True on every rank when ``flag`` is true on any: all ranks stop at the same batch."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def select_device(name, ddp):
    if name == "cpu" or (not name and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SlimError(f"--device {name}: CUDA is not available here; use --device cpu")
    if ddp.enabled:
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return torch.device(name if name.startswith("cuda") else f"cuda:{name}" if name.isdigit() else "cuda")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def batch_seed(seed, epoch, batch):
    """A distinct, reproducible seed for every (run seed, epoch, batch)."""
    return (seed * 1_000_003 + epoch * 10_007 + batch) % 2 ** 31


def rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class ResumableSampler(Sampler):
    """DistributedSampler order for (seed, epoch), minus the batches already done in that epoch."""

    def __init__(self, dataset, ddp, seed, batch_size):
        self.base = DistributedSampler(dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=seed)
        self.batch_size, self.skip = batch_size, 0

    def set_epoch(self, epoch, start_batch=0):
        self.base.set_epoch(epoch)
        self.skip = start_batch * self.batch_size

    def __iter__(self):
        return iter(list(self.base)[self.skip:])

    def __len__(self):
        return max(len(self.base) - self.skip, 0)


def seed_worker(worker_id):
    # each worker's numpy/random follow torch's per-worker seed, so augmentation is reproducible
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


class GracefulStop:
    """First Ctrl-C: finish the current batch, save last.pt, stop. Second: stop now."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving last.pt after this batch (Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
