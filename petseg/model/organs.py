"""The organ classes of an organ head: the autoPET III organ label maps' values.

Those maps (TotalSegmentator's whole-body classes merged into ten organs, on the PET grid, published for all
1,611 autoPET III training cases with the winning entry of that challenge) are what real training data has;
the phantoms write their organ maps with the same values, so one network trains on either.
"""

from __future__ import annotations

# Label value -> organ; 0 is everything else.
ORGAN_NAMES = (
    "background",
    "spleen",
    "kidneys",
    "liver",
    "bladder",
    "lungs",
    "brain",
    "heart",
    "stomach",
    "prostate",
    "glands",  # parotid and submandibular
)
ORGAN_CLASSES = len(ORGAN_NAMES)
