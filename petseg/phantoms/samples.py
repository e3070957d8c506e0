"""The two sample cases in `test/` that the container's test script runs on.

One FDG case with lesions whose CT lies on its own finer grid (so resampling is exercised), and one
lesion-free PSMA case (so an empty mask is exercised). Both are tiny, so they are cheap to keep in git.
"""

from __future__ import annotations

from pathlib import Path

from petseg.io import write_json
from petseg.phantoms.case import make_case
from petseg.phantoms.layouts import write_gc

SAMPLE_SEED = 2024
SAMPLES = (
    {"index": 0, "tracer": "fdg", "grid": "fdg-400", "ct_own_grid": True, "lesion_free": False},
    {"index": 1, "tracer": "psma", "grid": "psma-200", "ct_own_grid": False, "lesion_free": True},
)


def write_samples(out_dir: Path) -> list[dict]:
    """Write the sample cases (gc layout) and a manifest; returns its rows."""
    rows = []
    for spec in SAMPLES:
        phantom = make_case(seed=SAMPLE_SEED, size="tiny", **spec)
        files = write_gc(phantom, out_dir)
        rows.append({"case_id": phantom.case_id, "tracer": phantom.tracer, **spec, "files": files})
    write_json({"seed": SAMPLE_SEED, "cases": rows}, Path(out_dir) / "samples.json")
    return rows
