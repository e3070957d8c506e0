"""Synthetic whole-body PET/CT cases, because no real image data ships with petseg.

Anatomy is analytic (shapes in physical millimetres), so the CT can be drawn on its own finer grid and still
match the PET; optionally the organs come from real organ label maps instead. See `make_case` for one case in
memory and `generate` for a folder of cases in the Grand-Challenge or nnU-Net layout.
"""

from petseg.synthetic.case import GRIDS, SIZES, TRACERS, Phantom, make_case
from petseg.synthetic.generate import generate
from petseg.synthetic.layouts import LAYOUTS

__all__ = ["GRIDS", "LAYOUTS", "SIZES", "TRACERS", "Phantom", "generate", "make_case"]
