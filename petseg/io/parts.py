"""Splitting a cohort into parts that separate processes, GPUs or Slurm array tasks run independently.

Under torchrun, each process is one rank of the launch (`Launch`): `petseg predict` gives each rank its share
of the cases, and training joins the ranks into one process group; both read the environment here.

A case's part depends only on its id and the set of ids, never on the order in which files were listed:
the ids are sorted and dealt out round-robin, so the parts differ in size by at most one case and together
hold every case exactly once. Every part must therefore be given the same cases (the same folder or
manifest); a case added later may move others to another part, so a cohort that grows is rerun whole
(finished cases are skipped).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from petseg.errors import InputError

T = TypeVar("T")


def check_part(parts: int, part: int) -> None:
    """ValueError unless 0 <= part < parts."""
    if parts < 1:
        raise ValueError(f"--parts must be at least 1, got {parts}")
    if not 0 <= part < parts:
        raise ValueError(f"--part must be from 0 to {parts - 1} (--parts {parts}), got {part}")


def take_part(items: Sequence[T], parts: int, part: int, key: Callable[[T], str]) -> list[T]:
    """The items of part `part` of `parts`: sorted by `key` (the case id), every `parts`-th from `part` on."""
    check_part(parts, part)
    return sorted(items, key=key)[part::parts]


def nested_part(parts: int, part: int, ranks: int, rank: int) -> tuple[int, int]:
    """Part `rank` of `ranks` within part `part` of `parts`, as one part of `parts * ranks`.

    Round-robin twice is round-robin once with the product as the step: the items of part p are
    sorted[p::P], and the r-th of R shares of those is sorted[p + P*r :: P*R].
    """
    check_part(parts, part)
    check_part(ranks, rank)
    return parts * ranks, part + parts * rank


@dataclass(frozen=True)
class Launch:
    """This process's place among torchrun's processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Launch:
        """torchrun's RANK, WORLD_SIZE and LOCAL_RANK; a single process without them."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            world_size = int(os.environ["WORLD_SIZE"])
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise InputError(f"torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): {error}") from None
        if world_size < 1:
            raise InputError(f"torchrun's environment: WORLD_SIZE must be at least 1, got {world_size}")
        if not 0 <= rank < world_size or local_rank < 0:
            raise InputError(
                f"torchrun's environment: RANK {rank} and LOCAL_RANK {local_rank} must lie from 0 to "
                f"{world_size - 1} (WORLD_SIZE {world_size})"
            )
        return cls(rank, world_size, local_rank)
