"""autoPET-style case ids, patient ids and file uuids, all drawn from a case's own generator."""

from __future__ import annotations

import re
import uuid

import numpy as np

HEX_DIGITS = {"fdg": 10, "psma": 16}
_PATIENT = {tracer: re.compile(rf"^{tracer}_[0-9a-f]{{{digits}}}$") for tracer, digits in HEX_DIGITS.items()}
# Real FDG ids go on after the date with the study description (with a double space in it).
_FDG_DESCRIPTIONS = {True: "PET-CT Ganzkoerper  primaer mit KM", False: "PET-CT Ganzkoerper nativ"}


def new_patient_id(rng: np.random.Generator, tracer: str) -> str:
    digits = HEX_DIGITS[tracer]
    return f"{tracer}_{rng.bytes(digits // 2).hex()}"


def check_patient_id(patient_id: str, tracer: str) -> str:
    """A patient id must look like the tracer's autoPET ids (`fdg_` + 10 hex digits, `psma_` + 16)."""
    if not isinstance(patient_id, str) or not _PATIENT[tracer].match(patient_id):
        raise ValueError(
            f"patient_id {patient_id!r} does not fit a {tracer} case: expected '{tracer}_' followed by "
            f"{HEX_DIGITS[tracer]} lowercase hex digits"
        )
    return patient_id


def case_id(rng: np.random.Generator, patient_id: str, tracer: str, contrast: bool) -> str:
    """`fdg_<hex>_<MM-DD-YYYY>[-NA-<description>-<n>]` or `psma_<hex>_<YYYY-MM-DD>`."""
    years = (2001, 2008) if tracer == "fdg" else (2014, 2022)
    year = int(rng.integers(years[0], years[1] + 1))
    month = int(rng.integers(1, 13))
    day = int(rng.integers(1, 29))
    described = bool(rng.random() < 0.3)
    number = int(rng.integers(10000, 100000))
    if tracer == "psma":
        return f"{patient_id}_{year:04d}-{month:02d}-{day:02d}"
    date = f"{month:02d}-{day:02d}-{year:04d}"
    if described:
        return f"{patient_id}_{date}-NA-{_FDG_DESCRIPTIONS[contrast]}-{number}"
    return f"{patient_id}_{date}"


def plain_id(case_id: str) -> str:
    """An autoPET id without its free-text study description: `fdg_<hex>_<date>` (no spaces), the form
    phantoms get unless autoPET's own, awkward, ids are asked for."""
    return re.sub(r"-NA-.*$", "", case_id).replace(" ", "_")


def file_uuid(rng: np.random.Generator) -> str:
    """A uuid4-format name, as Grand Challenge gives its input files."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def patient_key(patient_id: str) -> int:
    """A stable integer for seeding the patient's own generator."""
    digest = patient_id.split("_", 1)[-1]
    try:
        return int(digest, 16) % (2**63)
    except ValueError:
        return int.from_bytes(patient_id.encode()[:8].ljust(8, b"\0"), "little")
