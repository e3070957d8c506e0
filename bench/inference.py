"""Inference of one case, stage by stage: petseg against the autoPET III entry's MONAI pipeline, with the
same weights.

Writes one phantom case in the Grand-Challenge layout (`--case`: the median FDG grid, 400 x 400 x 326 at
2.04 x 2.04 x 3 mm; the largest autoPET grid, 400 x 400 x 661; or a tiny one for tests) and one model
folder whose card fixes the settings both sides use (window, overlap, constant blending, sw_batch_size 1,
mean of the folds' logits, nearest back-mapping, `--folds` folds). Then it runs, alternating the order on
every repetition, each in a fresh Python process (as a container runs a case):

- `petseg`: the container's path, `petseg.inference.pipeline.run_grand_challenge` (one sliding-window
  pass running every fold on each window);
- `seed`: `bench.seed_style`, the entry's own MONAI pipeline (its crop and 2 mm grid, one pass per fold,
  Invertd, NIfTI round trip);
- `matched`: the same MONAI pipeline on petseg's crop and grid, whose mask must equal petseg's;
- with `--compile`, `compiled`: petseg with `torch.compile` (compilation on the first window counted).

petseg runs at `--precision` (default auto: bf16 autocast on CPUs with native bf16 and on GPUs from compute
capability 8, fp16 below); the references run fp32, as the entry did.

Reported: the median seconds per stage (read, preprocess, network, back-map, write; model loading apart),
each process's peak resident memory (its high-water mark, from wait4), the peak GPU memory where there is a
GPU, the Dice of each reference's mask against petseg's, and the speed-up over the matched reference. Exit
status 1 when the matched Dice is below `--min-dice`, the speed-up below `--min-speedup` or petseg's peak
memory above `--max-memory-gb`. Without `--model`, a random ensemble is made on the fly, with the lesion
logit's final bias set so that about `--lesion-fraction` of a central window is lesion (a random network
otherwise predicts everything or nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from bench.seed_style import STAGES, SeedSettings
from petseg.inference.compute_choices import DEVICES, PRECISIONS

REPO = Path(__file__).resolve().parents[1]
REFERENCES = ("seed", "matched")
CASES = ("fdg-326", "autopet-661", "tiny")
# petseg's StageTimer names -> the benchmark's stage names
PETSEG_STAGES = {
    "read": "read",
    "preprocess": "preprocess",
    "predict": "network",
    "postprocess": "back-map",
    "write": "write",
}
GB = 1e9


class BenchError(Exception):
    """A problem with the options or a failed run, reported as one line (the run's log tail included)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: a random ensemble)")
    parser.add_argument("--arch", default="resunet", help="architecture of the random ensemble")
    parser.add_argument("--folds", type=int, default=2, help="folds used (default 2)")
    parser.add_argument("--window", type=int, default=128, help="cubic sliding window edge (default 128)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding window overlap (default 0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline (default 3)")
    parser.add_argument("--case", choices=CASES, default="fdg-326")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="petseg's --precision (default auto: bf16 on CPUs with native bf16, fp16/bf16 autocast on "
        "GPUs); the references run fp32 on the CPU, as the entry did",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also run `compiled`: petseg with --compile (torch.compile), to weigh compiling on and off",
    )
    parser.add_argument(
        "--references",
        nargs="*",
        choices=REFERENCES,
        default=list(REFERENCES),
        help="reference pipelines run beside petseg (default: both; none when given without a name)",
    )
    parser.add_argument("--lesion-fraction", type=float, default=0.02, help="random ensemble only")
    parser.add_argument("--seed-gzip", action="store_true", help="the entry's .nii.gz copies, not .nii")
    parser.add_argument("--min-dice", type=float, default=0.99, help="matched reference against petseg")
    parser.add_argument("--min-speedup", type=float, default=3.0, help="matched total / petseg total")
    parser.add_argument("--max-memory-gb", type=float, default=6.0, help="petseg's peak resident memory")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every pipeline in this process: quicker, but no peak host memory per run",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument("--work", type=Path, default=None, help="keep case, model and masks here")


# ---------------------------------------------------------------------------------------------- the case


def write_case(name: str, folder: Path) -> Path:
    """A phantom in the Grand-Challenge input layout; returns its input folder.

    The full-size cases carry the CT on the PET grid, as the challenge data do; the tiny one carries it on its
    own finer grid, so that both pipelines' CT resampling is exercised too.
    """
    from petseg.io import CT_FOLDER, PET_FOLDER, write_image
    from petseg.synthetic import make_case

    if name == "tiny":
        phantom = make_case(3, 0, tracer="fdg", size="tiny", ct_own_grid=True, lesion_free=False)
    else:
        slices = {"fdg-326": 326, "autopet-661": 661}[name]
        phantom = make_case(
            0,
            0,
            tracer="fdg",
            size="full",
            grid="fdg-400",
            z_slices=slices,
            ct_own_grid=False,
            lesion_free=False,
        )
    input_dir = folder / "input"
    write_image(phantom.ct, input_dir / CT_FOLDER / f"{phantom.info['ct_uuid']}.mha")
    write_image(phantom.pet, input_dir / PET_FOLDER / f"{phantom.info['pet_uuid']}.mha")
    return input_dir


def window_count(shape: tuple[int, ...], roi: int, overlap: float) -> int:
    """Windows of MONAI's sliding_window_inference over a volume of `shape` (x, y, z)."""
    interval = max(int(roi * (1 - overlap)), 1)
    return math.prod(1 if size <= roi else math.ceil((size - roi) / interval) + 1 for size in shape)


# --------------------------------------------------------------------------------------------- the model


def _final_lesion_bias(network: Any) -> Any:
    """The bias of the network's last convolution (2 outputs: background, lesion)."""
    biases = [p for name, p in network.named_parameters() if name.endswith("bias") and tuple(p.shape) == (2,)]
    if not biases:
        raise BenchError("no final 2-channel bias found in the random network: pass --model")
    return biases[-1]


def calibrate(network: Any, window: Any, lesion_fraction: float) -> float:
    """Shift the lesion logit so that `lesion_fraction` of `window` is lesion; returns the shift."""
    import torch

    with torch.inference_mode():
        before = network(window)
        score = (before[0, 1] - before[0, 0]).flatten().numpy()
    shift = float(np.quantile(score, 1.0 - lesion_fraction))
    bias = _final_lesion_bias(network)
    with torch.no_grad():
        bias[1] -= shift
    with torch.inference_mode():
        after = network(window)
    moved = float((after[0, 1] - after[0, 0] - before[0, 1] + before[0, 0]).mean())
    if not math.isclose(moved, -shift, rel_tol=1e-3, abs_tol=1e-3):
        raise BenchError("the last 2-channel bias is not the network's last operation: pass --model")
    return shift


def central_window(image: np.ndarray, roi: int, divisor: int) -> np.ndarray:
    """The centre of a network-grid image (2, X, Y, Z): up to `roi` voxels a side, multiples of `divisor`."""
    slices = []
    for size in image.shape[1:]:
        edge = max(divisor, min(roi, size) // divisor * divisor)
        start = max(0, (size - edge) // 2)
        slices.append(slice(start, start + edge))
    return np.ascontiguousarray(image[(slice(None), *slices)])


def prepare_model(args: argparse.Namespace, input_dir: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The model folder both sides load: the benchmark's ensemble settings and the first `--folds` folds."""
    import torch

    from petseg.inference.preprocess import preprocess
    from petseg.io import find_case, read_case
    from petseg.model.card import EnsembleSettings, load_card, save_card
    from petseg.model.networks import input_divisor, load_fold, save_weights
    from petseg.model.untrained import create_untrained_model

    ensemble = EnsembleSettings(
        roi_size=(args.window,) * 3,
        overlap=args.overlap,
        blend_mode="constant",
        sw_batch_size=1,
        average="logits",
        threshold=0.5,
        back_interpolation="nearest",
    )
    folder.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        card = create_untrained_model(
            folder, architecture=args.arch, folds=args.folds, seed=0, ensemble=ensemble
        )
        ct, pet = read_case(find_case(input_dir))
        image = preprocess(ct, pet, card.preprocessing).image
        window = torch.from_numpy(central_window(image, args.window, input_divisor(card.architecture)))[None]
        shifts, folds = [], []
        for fold in card.folds:
            network = load_fold(card, folder, fold.weights, None)
            shifts.append(calibrate(network, window, args.lesion_fraction))
            folds.append(replace(fold, sha256=save_weights(network, folder / fold.weights)))
        note = f"random weights, lesion bias shifted by {[round(s, 4) for s in shifts]}"
        card = replace(card, folds=tuple(folds), provenance={**card.provenance, "note": note})
        source = f"random {args.arch} ensemble ({note})"
    else:
        original = load_card(args.model)
        if len(original.folds) < args.folds:
            raise BenchError(f"{args.model} has {len(original.folds)} folds, fewer than --folds {args.folds}")
        folds = original.folds[: args.folds]
        for fold in folds:
            target = folder / fold.weights
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.model / fold.weights, target)
        card = replace(original, folds=tuple(folds), ensemble=ensemble)
        source = f"{args.model} ({original.name}, {original.architecture.name}, trained: {original.trained})"
    save_card(card, folder)
    return folder, {"source": source, "architecture": card.architecture.name, "card": card.to_json()}


def seed_settings(model_dir: Path, geometry: str, gzip: bool) -> SeedSettings:
    """The reference's settings from the benchmark's card: equal window, overlap, blending and spacing."""
    from petseg.model.card import load_card

    card = load_card(model_dir)
    pre, ens = card.preprocessing, card.ensemble
    return SeedSettings(
        roi_size=tuple(ens.roi_size),
        overlap=ens.overlap,
        sw_batch_size=ens.sw_batch_size,
        blend_mode=ens.blend_mode,
        spacing_mm=tuple(pre.spacing_mm),
        ct_window_hu=tuple(pre.ct_window_hu),
        ct_fill_hu=pre.ct_fill_hu,
        # the entry's Invertd was bilinear; matched follows the card, as petseg does
        nearest_interp=geometry == "matched" and ens.back_interpolation == "nearest",
        nifti_gzip=gzip,
        geometry=geometry,
        body_threshold_hu=pre.body_threshold_hu,
        body_margin_mm=pre.body_margin_mm,
    )


# ---------------------------------------------------------------------------------------------- one run


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """One run: load the model, segment the case, write the mask; the stage times and the mask's path."""
    import torch

    from petseg.inference.timing import StageTimer

    model_dir, input_dir, output = Path(spec["model"]), Path(spec["input"]), Path(spec["output"])
    cuda = torch.cuda.is_available() and spec["device"] != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = StageTimer(quiet=True)
    shape = None  # petseg's network grid is computed by the parent, outside the measured run
    started = time.perf_counter()
    if spec["pipeline"] in ("petseg", "compiled"):
        from petseg.inference.pipeline import run_grand_challenge
        from petseg.inference.predict import Predictor

        predictor = Predictor.load(
            model_dir, spec["device"], precision=spec["precision"], compile=spec["pipeline"] == "compiled"
        )
        load_s = time.perf_counter() - started
        mask = run_grand_challenge(input_dir, output, predictor, timer)
        stages = {PETSEG_STAGES[name]: seconds for name, seconds in timer.seconds.items()}
        device = predictor.compute.describe() + (", compiled" if predictor.compiled else "")
    else:
        from bench.seed_style import load_networks, segment_seed_style
        from petseg.inference.predict import select_device
        from petseg.io import find_case

        compute = select_device(spec["device"], precision="fp32")
        networks = load_networks(model_dir, None, compute.device)
        load_s = time.perf_counter() - started
        settings = seed_settings(model_dir, spec["pipeline"], spec["gzip"])
        files = find_case(input_dir)
        mask = output / "mask.mha"
        info = segment_seed_style(files.ct, files.pet, networks, settings, mask, timer, compute.device)
        stages = dict(timer.seconds)
        device = f"{compute.device} (fp32)"
        shape = list(info["network_input_xyz"])  # type: ignore[call-overload]
    return {
        "pipeline": spec["pipeline"],
        "stages": {name: stages[name] for name in STAGES},
        "load_s": load_s,
        "mask": str(mask),
        "network_input_xyz": shape,
        "device": device,
        "gpu_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_rss_bytes": None,
    }


def run_child(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`execute` in a fresh interpreter, as a container runs a case; adds the process's peak resident memory.

    The peak is the kernel's high-water mark of the child's resident set (ru_maxrss from wait4): everything
    numpy, torch and ITK allocated, which tracemalloc would not see.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = folder / "spec.json", folder / "result.json", folder / "log.txt"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.inference", str(spec_path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text()[-3000:]
        raise BenchError(f"{spec['pipeline']} run failed (exit {process.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    result["peak_rss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return result


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    Path(spec["result"]).write_text(json.dumps(execute(spec)))
    return 0


# ----------------------------------------------------------------------------------------- the comparison


def read_mask(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(bool), image


def compare_masks(petseg_path: Path, other_path: Path) -> dict[str, Any]:
    """Dice and voxel counts of two masks, which must lie on the same (PET) grid."""
    from petseg.geometry import Grid

    a, image_a = read_mask(petseg_path)
    b, image_b = read_mask(other_path)
    if not Grid.of(image_a).matches(Grid.of(image_b)):
        raise BenchError(f"{other_path} is not on the grid of {petseg_path}")
    from petseg.evaluation.metrics import mask_agreement

    return {"dice": mask_agreement(a, b), "voxels": int(b.sum()), "petseg_voxels": int(a.sum())}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per pipeline: median seconds per stage and in total, model loading, peak memories."""
    summary = {}
    for name, records in runs.items():
        totals = [sum(run["stages"].values()) for run in records]
        gpu = [run["gpu_peak_bytes"] for run in records if run["gpu_peak_bytes"] is not None]
        rss = [run["peak_rss_bytes"] for run in records if run["peak_rss_bytes"] is not None]
        summary[name] = {
            "stages_s": {
                stage: statistics.median(run["stages"][stage] for run in records) for stage in STAGES
            },
            "total_s": statistics.median(totals),
            "other_s": statistics.median(
                total - run["stages"]["network"] for total, run in zip(totals, records, strict=True)
            ),
            "total_runs_s": totals,
            "load_s": statistics.median(run["load_s"] for run in records),
            "peak_rss_gb": max(rss) / GB if rss else None,
            "peak_gpu_gb": max(gpu) / GB if gpu else None,
        }
    return summary


def _machine() -> dict[str, Any]:
    import monai
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "simpleitk": sitk.Version_VersionString(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(memory, 1),
        "gpu": gpu,
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Everything `run` prints, as one JSON-serialisable report."""
    from petseg.geometry import Grid
    from petseg.inference.preprocess import body_box, ct_on_pet_grid, network_grid
    from petseg.io import find_case, read_case

    started = time.perf_counter()
    input_dir = write_case(args.case, work / "case")
    model_dir, model = prepare_model(args, input_dir, work / "model")
    ct, pet = read_case(find_case(input_dir))
    pre = model["card"]["preprocessing"]
    ct = ct_on_pet_grid(ct, pet, pre["ct_fill_hu"])
    box = body_box(ct, pre["body_threshold_hu"], pre["body_margin_mm"])
    petseg_grid = network_grid(Grid.of(pet), box, tuple(pre["spacing_mm"])).size
    case = {"name": args.case, "pet_size": list(pet.GetSize()), "pet_spacing_mm": list(pet.GetSpacing())}
    del ct, pet
    prepared_s = time.perf_counter() - started

    pipelines = ["petseg", *(["compiled"] if args.compile else [])]
    pipelines += [name for name in REFERENCES if name in args.references]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pipelines}
    load_before = os.getloadavg()[0]
    for repetition in range(args.repeats):
        for name in pipelines if repetition % 2 == 0 else reversed(pipelines):
            spec = {
                "pipeline": name,
                "model": str(model_dir),
                "input": str(input_dir),
                "output": str(work / "runs" / f"{name}-{repetition}" / "output"),
                "device": args.device,
                "precision": args.precision,
                "gzip": args.seed_gzip,
            }
            folder = work / "runs" / f"{name}-{repetition}"
            runs[name].append(execute(spec) if args.in_process else run_child(spec, folder))
    load_after = os.getloadavg()[0]

    petseg_mask = Path(runs["petseg"][0]["mask"])
    masks: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    for name in pipelines:
        first = Path(runs[name][0]["mask"])
        repeatable = all(
            np.array_equal(read_mask(first)[0], read_mask(Path(run["mask"]))[0]) for run in runs[name][1:]
        )
        masks[name] = {**compare_masks(petseg_mask, first), "repeatable": repeatable}
        own_grid = name in ("petseg", "compiled")
        shapes[name] = list(petseg_grid) if own_grid else runs[name][0]["network_input_xyz"]
    return {
        "benchmark": "inference",
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "load_average": {"start": load_before, "end": load_after},
        "case": case,
        "model": model["source"],
        "settings": {
            "architecture": model["architecture"],
            "folds": args.folds,
            "window": args.window,
            "overlap": args.overlap,
            "blend_mode": "constant",
            "sw_batch_size": 1,
            "average": "logits",
            "back_interpolation": {
                "petseg": "nearest",
                "compiled": "nearest",
                "matched": "nearest",
                "seed": "bilinear (Invertd)",
            },
            "device": args.device,
            "petseg_precision": args.precision,
            "petseg_compile": args.compile,
            "repeats": args.repeats,
            "seed_gzip": args.seed_gzip,
            "in_process": args.in_process,
        },
        "network_input_xyz": shapes,
        "windows_per_fold": {
            name: window_count(tuple(shape), args.window, args.overlap) for name, shape in shapes.items()
        },
        "summary": summarise(runs),
        "masks": masks,
        "runs": runs,
        "setup_s": prepared_s,
    }


def verdicts(report: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(line, passed) for every target: equal masks, speed-up, memory."""
    summary, masks = report["summary"], report["masks"]
    lines = []
    if "matched" in masks:
        value = masks["matched"]["dice"]
        lines.append(
            (
                f"Dice petseg / matched reference {value:.4f} (target >= {args.min_dice:g})",
                value >= args.min_dice,
            )
        )
        ratio = summary["matched"]["total_s"] / summary["petseg"]["total_s"]
        target = f"target >= {args.min_speedup:g}"
        lines.append(
            (f"speed-up over the matched reference {ratio:.2f}x ({target})", ratio >= args.min_speedup)
        )
    peak = summary["petseg"]["peak_rss_gb"]
    if peak is not None:
        target = f"target < {args.max_memory_gb:g}"
        lines.append((f"petseg peak host memory {peak:.2f} GB ({target})", peak < args.max_memory_gb))
    return lines


def _row(label: str, values: list[str]) -> str:
    return f"{label:<22}" + "".join(f"{value:>12}" for value in values)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> bool:
    """The table and the verdicts; True when every target is met."""
    machine, settings, summary = report["machine"], report["settings"], report["summary"]
    names = list(summary)
    print(
        f"python {machine['python']}, torch {machine['torch']}, monai {machine['monai']}, "
        f"SimpleITK {machine['simpleitk']}; {machine['cpu']}, {machine['cpus']} CPUs "
        f"({machine['torch_threads']} torch threads), {machine['memory_gib']} GiB; GPU {machine['gpu']}; "
        f"1-min load average {report['load_average']['start']:.1f} at the start, "
        f"{report['load_average']['end']:.1f} at the end"
    )
    case = report["case"]
    size = " x ".join(str(n) for n in case["pet_size"])
    spacing = " x ".join(f"{s:.3g}" for s in case["pet_spacing_mm"])
    print(f"case {case['name']}: PET {size} at {spacing} mm; model: {report['model']}")
    print(
        f"{settings['folds']} folds of {settings['architecture']}, window {settings['window']}^3, overlap "
        f"{settings['overlap']:g}, constant blending, sw_batch_size 1, mean of logits; device {args.device}; "
        f"{settings['repeats']} runs per pipeline, alternating, "
        + ("all in this process" if args.in_process else "each in a fresh process")
    )
    for name in names:
        shape = " x ".join(str(n) for n in report["network_input_xyz"][name])
        windows = report["windows_per_fold"][name]
        device = report["runs"][name][0]["device"]
        print(f"  {name:<8} network input {shape} at 2 mm, {windows} windows per fold; {device}")
    print()
    print(_row("median seconds", names))
    for stage in STAGES:
        print(_row(stage, [f"{summary[n]['stages_s'][stage]:.2f}" for n in names]))
    print(_row("total", [f"{summary[n]['total_s']:.2f}" for n in names]))
    print(_row("all but network", [f"{summary[n]['other_s']:.2f}" for n in names]))
    print(_row("load model", [f"{summary[n]['load_s']:.2f}" for n in names]))
    for label, key in (("peak host memory GB", "peak_rss_gb"), ("peak GPU memory GB", "peak_gpu_gb")):
        if any(summary[n][key] is not None for n in names):
            print(
                _row(label, [f"{summary[n][key]:.2f}" if summary[n][key] is not None else "-" for n in names])
            )
    base = summary["petseg"]["total_s"]
    print(_row("total / petseg", [f"{summary[n]['total_s'] / base:.2f}" for n in names]))
    masks = report["masks"]
    print(_row("mask voxels", [str(masks[n]["voxels"]) for n in names]))
    print(_row("Dice with petseg", [f"{masks[n]['dice']:.4f}" for n in names]))
    print(_row("repeatable", ["yes" if masks[n]["repeatable"] else "NO" for n in names]))
    stages = summary["petseg"]["stages_s"]
    dominant = max(stages, key=stages.get)
    print(f"\npetseg's largest stage: {dominant} ({stages[dominant] / base:.0%} of its total)")
    passed = True
    for line, ok in verdicts(report, args):
        print(f"{line}: {'ok' if ok else 'NOT MET'}")
        passed &= ok
    return passed


def run(args: argparse.Namespace) -> int:
    if args.folds < 1 or args.repeats < 1:
        print("--folds and --repeats must be at least 1")
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        try:
            report = measure(args, work)
        except BenchError as error:
            print(f"bench inference: {error}")
            return 2
        passed = print_report(report, args)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
