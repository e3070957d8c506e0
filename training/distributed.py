"""Single-process and torchrun (DistributedDataParallel) runs behind one small interface.

`torchrun --nproc_per_node=N -m training train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
the run is a plain single process. NCCL is used on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from petseg.io.parts import Launch

log = logging.getLogger("petseg.training")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files, logs and progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so sums of many cases stay exact enough)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group together: a rank that tears gloo down while another still talks to it
        can abort both ("terminate called without an active exception")."""
        if self.enabled and dist.is_initialized():
            try:
                dist.barrier()
            except RuntimeError as error:  # another rank is gone already: nothing left to wait for
                log.warning("rank %d: leaving the process group without the others: %s", self.rank, error)
            dist.destroy_process_group()


def init_distributed() -> Distributed:
    """Join the process group when launched by torchrun; a single process otherwise. The ranks are read as
    `petseg predict` reads them (`Launch`), so a malformed environment is the same one-line error."""
    launch = Launch.from_environment()
    if launch.world_size <= 1:
        return Distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group(backend=backend)
    return Distributed(rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank)
