"""Cohort runs of `petseg predict`: which cases this process takes, its status log, and its summary.

One process segments its share of a cohort with one loaded ensemble. The share is a part of the cases
(`--parts N --part K`, e.g. one Slurm array task's) and, under torchrun, rank RANK's share of that part, on
GPU LOCAL_RANK. The processes never talk to each other: each case's output is written atomically and
counts as done only when complete, so any process can be killed and rerun, and the runs meet only in
`OUT/status.jsonl`, one line per case appended whole (`StatusLog`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petseg.errors import OutputError
from petseg.io.parts import Launch, check_part, nested_part, take_part

if TYPE_CHECKING:
    import torch

    from petseg.io.cases import Case

log = logging.getLogger("petseg")

STATUS_FILE = "status.jsonl"
OUTCOMES = ("done", "skipped", "failed")


def check_launch(parser: argparse.ArgumentParser, args: argparse.Namespace, launch: Launch) -> None:
    """--parts/--part and the device, checked against torchrun's ranks before anything loads (exit 2)."""
    if (args.part is None) != (args.parts is None):
        parser.error("--parts and --part go together")
    if args.parts is not None:
        try:
            check_part(args.parts, args.part)
        except ValueError as error:
            parser.error(str(error))
    if args.dicom is not None and (args.parts is not None or launch.world_size > 1):
        parser.error("--parts/--part and torchrun: with --input or --manifest only")
    if launch.world_size > 1 and args.device.startswith("cuda:"):
        parser.error(
            f"--device {args.device} under torchrun: every rank would share one GPU; give auto or cuda"
        )


def device_of(device: str, launch: Launch) -> str:
    """Under torchrun, auto and cuda mean the rank's own GPU, cuda:LOCAL_RANK, where there is CUDA."""
    if launch.world_size <= 1 or device not in ("auto", "cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{launch.local_rank}"
    return device  # auto: each rank on the CPU; cuda: select_device's one-line error


def cases_of(args: argparse.Namespace, launch: Launch) -> list[Case]:
    """The cases of --input or --manifest that this process takes: its part, and its rank's share of it."""
    from petseg.io.cases import discover_cases
    from petseg.io.manifest import read_manifest

    cases = read_manifest(args.manifest) if args.manifest is not None else discover_cases(args.input)
    source = args.manifest if args.manifest is not None else args.input
    parts, part = (args.parts, args.part) if args.parts is not None else (1, 0)
    parts, part = nested_part(parts, part, launch.world_size, launch.rank)
    mine = take_part(cases, parts, part, key=lambda case: case.name)
    if parts > 1:
        log.info("%d case(s) in %s; part %d of %d: %d case(s)", len(cases), source, part, parts, len(mine))
    else:
        log.info("%d case(s) in %s", len(cases), source)
    return mine


class StatusLog:
    """`OUT/status.jsonl`: one JSON line per case, appended whole.

    Each line goes out in one `os.write` on a descriptor opened with O_APPEND and is fsynced, so processes
    writing to the same file (torchrun ranks, array tasks on one machine) never interleave within a line,
    and a line that is there survives a crash. (On NFS, O_APPEND is not atomic between machines; there,
    give the array tasks a local output folder each, or read the file knowing a line may be torn.)
    """

    def __init__(self, output_dir: Path, launch: Launch, part: tuple[int, int] | None) -> None:
        self.path = Path(output_dir) / STATUS_FILE
        self.fields: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        if launch.world_size > 1:
            self.fields |= {"rank": launch.rank, "world_size": launch.world_size}
        if part is not None:
            self.fields |= {"part": part[1], "parts": part[0]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(
                f"{self.path}: cannot write the status log: {error.strerror or error}"
            ) from None

    def append(self, case: str, outcome: str, **values: Any) -> None:
        record = {"case": case, "outcome": outcome, "time": round(time.time(), 3), **values, **self.fields}
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode()
        try:
            written = os.write(self.descriptor, line)
            os.fsync(self.descriptor)
        except OSError as error:
            raise OutputError(
                f"{self.path}: cannot write the status log: {error.strerror or error}"
            ) from None
        if written != len(line):  # a full disk: the line is torn, and said so
            raise OutputError(f"{self.path}: status line cut short ({written} of {len(line)} bytes)")

    def close(self) -> None:
        os.close(self.descriptor)


def peak_memory(device: torch.device) -> dict[str, float]:
    """The process's peak resident memory so far (it only grows: the largest case so far sets it) and, on
    CUDA, `device`'s peak allocation since the last `reset_gpu_peak`, in MB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    peaks = {"peak_rss_mb": round(rss_kb / 1024, 1)}
    if device.type == "cuda":
        import torch

        peaks["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peaks


def reset_gpu_peak(device: torch.device) -> None:
    """Start the next case's GPU peak from what is allocated now (the ensemble). The device is named: the
    current one is GPU 0 in every torchrun rank, whose statistics are another rank's."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class Tally:
    """Outcomes of this process's cases, for the summary line."""

    started: float = field(default_factory=time.perf_counter)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def summary(self) -> str:
        hours = (time.perf_counter() - self.started) / 3600
        rate = self.counts["done"] / hours if hours > 0 else 0.0
        shown = ", ".join(f"{self.counts[o]} {o}" for o in OUTCOMES)
        return f"{shown}; {rate:.1f} cases per hour ({hours * 60:.1f} min)"


def stage_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """A timer's stage times, rounded for the status line."""
    return {name: round(value, 3) for name, value in seconds.items()}
