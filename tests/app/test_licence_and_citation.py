"""The repository says how petseg may be used and cited: an Apache-2.0 LICENSE and a CITATION.cff that
names petseg's own version and the papers and datasets it builds on."""

import re
from pathlib import Path

import petseg

REPO = Path(__file__).resolve().parents[2]


def test_licence_is_apache_2_and_matches_the_package_metadata():
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_citation_names_the_version_the_papers_and_the_datasets():
    text = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", text, re.MULTILINE)
    assert re.search(rf'^version: "{re.escape(petseg.__version__)}"$', text, re.MULTILINE)
    assert re.search(r"^license: Apache-2\.0$", text, re.MULTILINE)
    for title in (
        "Generalized Dice Focal Loss trained 3D Residual UNet",  # the autoPET entries
        "Adaptive Voxel-Weighted Loss Using L1 Norms",  # the L1DFL paper
        "A whole-body FDG-PET/CT Dataset with manually annotated Tumor Lesions",  # the autoPET FDG data
        "The autoPET challenge",
    ):
        assert title in " ".join(text.split()), title
