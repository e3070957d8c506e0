"""One sliding window through one network: fp32, channels-last, bf16 autocast and torch.compile compared.

Where `inference` times whole cases, this isolates the network stage, which dominates on the CPU: one
window of `--window`^3 (2 input channels, as the card's) through one random `--arch` network in inference
mode, for each variant:

- `fp32`: plain float32 in PyTorch's default layout (what the references run, and `--precision fp32`);
- `fp32-cl`: float32 with weights and window channels-last (petseg on CPUs without native bf16);
- `bf16-cl`: channels-last under bf16 autocast (petseg's CPU default where the CPU has native bf16);
- `compiled`: `bf16-cl` (or `fp32-cl` without native bf16) through `torch.compile`, with the time of its
  first call (the compilation) reported apart.

The variants take turns, the order reversed on every repetition (`--repeats`, after one warm-up call
each), so that a change in the machine's load reaches all of them. Reported: the median and fastest seconds
per window, the speed-up of each over `fp32`, and the largest difference of its lesion probability from
`fp32`'s. `--no-compile` leaves out `compiled` (it needs a C++ compiler and tens of seconds). On a GPU
(`--device cuda`) the variants run there, with fp16 instead of bf16 below compute capability 8.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="resunet", help="network (default resunet, the autoPET III entry's)"
    )
    parser.add_argument("--window", type=int, default=128, help="cubic window edge (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument("--seed", type=int, default=0)


def _variants(network: Any, device: Any, reduced: Any, compile_too: bool) -> dict[str, Callable[[Any], Any]]:
    """name -> function(window) -> logits (float32), each on its own copy of the network."""
    import copy

    import torch

    def run_with(model: Any, dtype: Any, channels_last: bool) -> Callable[[Any], Any]:
        def call(window: Any) -> Any:
            if channels_last:
                window = window.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return model(window).float()

        return call

    plain = network.to(device)
    channels_last = copy.deepcopy(plain).to(memory_format=torch.channels_last_3d)
    variants = {
        "fp32": run_with(plain, None, False),
        "fp32-cl": run_with(channels_last, None, True),
    }
    if reduced is not None:
        short = {torch.bfloat16: "bf16", torch.float16: "fp16"}[reduced]
        variants[f"{short}-cl"] = run_with(channels_last, reduced, True)
    if compile_too:
        compiled = torch.compile(copy.deepcopy(channels_last))
        variants["compiled"] = run_with(compiled, reduced, True)
    return variants


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from petseg.inference.predict import cpu_has_native_bf16
    from petseg.model.networks import build_network
    from petseg.model.settings import Architecture

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device available")
        major, _ = torch.cuda.get_device_capability(device)
        reduced = torch.bfloat16 if major >= 8 else torch.float16
    else:
        reduced = torch.bfloat16 if cpu_has_native_bf16() else None
    torch.manual_seed(args.seed)
    size = (args.window,) * 3
    network = build_network(Architecture(args.arch), size).eval()
    window = torch.rand(1, 2, *size, device=device)
    variants = _variants(network, device, reduced, compile_too=not args.no_compile)

    def timed(call: Callable[[Any], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = call(window)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out

    first: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for name, call in variants.items():
            first[name], outputs[name] = timed(call)
        for repetition in range(args.repeats):
            order = list(variants) if repetition % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(timed(variants[name])[0])
    reference = torch.softmax(outputs["fp32"], 1)[:, 1]
    base = statistics.median(times["fp32"])
    rows = {}
    for name in variants:
        probability = torch.softmax(outputs[name], 1)[:, 1]
        median = statistics.median(times[name])
        rows[name] = {
            "median_s": median,
            "fastest_s": min(times[name]),
            "first_call_s": first[name],
            "speedup": base / median,
            "max_probability_difference": float((probability - reference).abs().max()),
        }
    return {
        "arch": args.arch,
        "window": args.window,
        "device": str(device),
        "reduced_precision": str(reduced).removeprefix("torch.") if reduced is not None else None,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "variants": rows,
    }


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.window < 16:
        print("--repeats must be at least 1 and --window at least 16")
        return 2
    report = measure(args)
    reduced = report["reduced_precision"] or "none (no native bf16: the CPU would emulate it)"
    print(
        f"{report['arch']}, one window of {report['window']}^3 on {report['device']} "
        f"({report['threads']} threads); reduced precision: {reduced}; "
        f"{report['repeats']} timed calls per variant, alternating"
    )
    print(f"{'variant':<10}{'median s':>10}{'fastest s':>11}{'first s':>9}{'x fp32':>8}{'max |dp|':>10}")
    for name, row in report["variants"].items():
        print(
            f"{name:<10}{row['median_s']:>10.3f}{row['fastest_s']:>11.3f}{row['first_call_s']:>9.2f}"
            f"{row['speedup']:>8.2f}{row['max_probability_difference']:>10.4f}"
        )
    return 0
