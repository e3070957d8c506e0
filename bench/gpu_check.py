"""The prepared GPU check: one command that measures, on a machine with an NVIDIA GPU, what a CPU cannot.

    python -m bench gpu-check --out OUT          # about 10 minutes on one H100/H200-class GPU

1. Inference at the autoPET III entry's settings: a random five-fold `resunet` at its 192³ window and 0.5
   overlap on the largest autoPET grid (400 x 400 x 661), end to end in a fresh process as a container runs
   it, stage by stage, with peak GPU and host memory (`bench inference`; at smoke sizes also against the
   entry's own MONAI pipeline).
2. Loader against model throughput while training at 128³ and 64³, on whole-body phantoms (`bench
   loader`): patches per second each way, and the CPU cost per patch and worker, which says how many cores
   a GPU host needs.
3. The demo recipe's training time on the GPU: the first epochs of `python -m training demo` with five
   folds side by side, timed per epoch and extrapolated to the recipe's epoch count.

Each step runs in its own process with a time limit; a step that fails is recorded and the others still
run. The figures go to OUT/gpu-check.json and, as the table `bench/README.md` shows, to OUT/gpu-check.md.
`--smoke` runs the same steps at toy sizes on any device (what the test suite runs on a CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures and work files")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device (a test of the script)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the networks run")
    parser.add_argument(
        "--step-timeout", type=float, default=420.0, help="seconds allowed for each step (default 420)"
    )


def _steps(out: Path, smoke: bool, device: str) -> list[tuple[str, list[str], Path | None]]:
    python = [sys.executable]
    data = out / "whole-body-phantoms"
    if smoke:
        inference = ["--case", "tiny", "--arch", "resunet-tiny", "--folds", "2", "--window", "32"]
        inference += ["--overlap", "0.25", "--repeats", "1", "--references", "matched"]
        phantoms = ["--cases", "4", "--size", "tiny"]
        tiny_loader = ["--patch", "32", "--batch", "2", "--workers", "1", "--arch", "resunet-tiny"]
        loaders = [("loader-32", tiny_loader), ("loader-32-device", [*tiny_loader, "--augment-on", "device"])]
        demo = ["--cases", "10", "--size", "tiny", "--folds", "2", "--epochs", "1", "--no-split-by-tracer"]
        demo += ["--parallel", "1", "--evaluation-cases", "2", "--evaluation-negatives", "1"]
    else:
        inference = ["--case", "autopet-661", "--arch", "resunet", "--folds", "5", "--window", "192"]
        # No reference pipeline: the entry's ran fp32 on the CPU, 300 windows of 192³ (bench/README.md has
        # the CPU comparison); here the GPU's own figures are what is missing.
        inference += ["--overlap", "0.5", "--repeats", "2", "--references"]
        phantoms = ["--cases", "12", "--size", "full"]
        loaders = [
            (f"loader-{p}", ["--patch", str(p), "--batch", "2", "--workers", "12", "--arch", "resunet"])
            for p in (128, 64)
        ]
        # The same at 128³ with the augmentation on the GPU: the loader workers only crop.
        loaders.append((f"{loaders[0][0]}-device", [*loaders[0][1], "--augment-on", "device"]))
        # 20 whole-body cases, not the recipe's 80: an epoch's training does not depend on the number of
        # cases (64 patches; validation on a fifth of them), and the check has minutes, not the recipe's
        # 8.5 (bench/README.md, "The whole demo recipe on the GPU").
        demo = ["--cases", "20", "--epochs", "3", "--parallel", "5", "--workers", "3"]
        demo += ["--evaluation-cases", "2", "--evaluation-negatives", "1"]  # the training time is the figure
    steps: list[tuple[str, list[str], Path | None]] = [
        (
            "inference",
            [*python, "-m", "bench", "inference", *inference, "--device", device, "--min-speedup", "0",
             "--json", str(out / "inference.json"), "--work", str(out / "inference-work")],
            out / "inference.json",
        ),
        (
            "phantoms",
            [*python, "-m", "petseg", "phantoms", "--output", str(data), *phantoms, "--layout", "nnunet",
             "--no-negatives", "-q"],
            None,
        ),
    ]  # fmt: skip
    for name, options in loaders:
        steps.append(
            (
                name,
                [*python, "-m", "bench", "loader", "--data", str(data), *options, "--loss", "gdfl",
                 "--device", device, "--json", str(out / f"{name}.json")],
                out / f"{name}.json",
            )
        )  # fmt: skip
    steps.append(
        (
            "demo-training",
            [*python, "-m", "training", "demo", "--output", str(out / "demo-model"), "--work",
             str(out / "demo-work"), *demo, "--device", device, "-q"],
            None,
        )
    )  # fmt: skip
    return steps


def _gpu() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {"gpu": None}
    properties = torch.cuda.get_device_properties(0)
    return {"gpu": properties.name, "gpu_memory_gb": round(properties.total_memory / 1e9, 1)}


def _text(stream: str | bytes | None) -> str:
    """A captured stream as text, whichever form it came in."""
    if stream is None:
        return ""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream


def _epoch_seconds(log_text: str) -> list[float]:
    """The seconds of each epoch, from the trainer's epoch lines ("epoch 2/100 ... 12.3 s")."""
    return [float(m) for m in re.findall(r"epoch \d+/\d+ .*?([\d.]+) s$", log_text, re.MULTILINE)]


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "smoke": bool(args.smoke),
        "device": args.device,
        **_gpu(),
        "steps": {},
    }
    failed = 0
    for name, command, figures in _steps(out, args.smoke, args.device):
        print(f"gpu-check: {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=args.step_timeout, check=False
            )
            status, log_text = result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired as expired:
            status = "timeout"
            # TimeoutExpired holds bytes even when the run asked for text.
            log_text = "".join(_text(stream) for stream in (expired.stdout, expired.stderr))
        seconds = time.perf_counter() - started
        (out / f"{name}.log").write_text(log_text)
        entry: dict[str, Any] = {"status": status, "seconds": round(seconds, 1)}
        if figures is not None and figures.is_file():
            entry["figures"] = json.loads(figures.read_text())
        if name == "demo-training":
            epochs = _epoch_seconds(log_text)
            entry["epoch_seconds"] = epochs
            from training.demo import DemoRecipe

            ran = int(command[command.index("--epochs") + 1])
            # The median epoch where the folds' epoch lines reached the log; else the whole step (phantoms
            # and export included) per epoch, an upper bound.
            per_epoch = sorted(epochs)[len(epochs) // 2] if epochs else seconds / ran
            entry["estimate_from"] = "epoch lines" if epochs else "step time (upper bound)"
            entry["recipe_epochs"] = DemoRecipe.epochs
            entry["recipe_minutes_estimate"] = round(per_epoch * DemoRecipe.epochs / 60.0, 1)
        if status != 0:
            failed += 1
            entry["tail"] = log_text[-2000:]
        report["steps"][name] = entry
        print(f"gpu-check: {name}: {status} in {seconds:.1f} s", flush=True)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu-check.md").write_text(markdown(report))
    print((out / "gpu-check.md").read_text())
    return 1 if failed else 0


def markdown(report: dict[str, Any]) -> str:
    """The figures as the table of bench/README.md's GPU section."""
    lines = [
        f"GPU check on {report.get('gpu') or 'no GPU'} ({report.get('gpu_memory_gb', '-')} GB), "
        f"{'smoke sizes' if report['smoke'] else 'full sizes'}:",
        "",
        "| step | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, entry in report["steps"].items():
        figures = entry.get("figures", {})
        shown = ""
        if "loader_patches_per_s" in figures:
            loader, model = figures["loader_patches_per_s"], figures["model_patches_per_s"]
            cost = figures["cpu_ms_per_patch_per_worker"]
            shown = (
                f"loader {loader:.1f} patches/s, model {model:.1f} patches/s, {cost:.0f} CPU ms per patch "
                "and worker"
            )
        elif "recipe_minutes_estimate" in entry:
            shown = f"{entry['recipe_minutes_estimate']} min for {entry['recipe_epochs']} epochs (estimate)"
        elif "summary" in figures:
            petseg = figures["summary"]["petseg"]
            stages = ", ".join(f"{k} {v:.2f}" for k, v in petseg["stages_s"].items())
            gpu = petseg.get("peak_gpu_gb")
            shown = (
                f"petseg {petseg['total_s']:.2f} s ({stages}), peak host {petseg['peak_rss_gb']:.2f} GB, "
                f"peak GPU {'-' if gpu is None else f'{gpu:.2f}'} GB"
            )
            if "matched" in figures["summary"]:
                shown += f"; the entry's MONAI pipeline {figures['summary']['matched']['total_s']:.2f} s"
        lines.append(f"| {name} | {entry['status']} | {entry['seconds']} | {shown} |")
    return "\n".join(lines) + "\n"
