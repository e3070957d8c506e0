"""Reading DICOM values as Python values: dates, times, decimal strings, and vendors' private elements.

pydicom hands dates and times over as the text DICOM stores (`20250101`, `110000.000000`), and private
elements of a file written with implicit VR as raw bytes. These functions turn both into `datetime`, `float`
and `str`, and raise `ValueError` for text that is not what the value representation allows: the caller
knows which tag and file it came from and says so in the error.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

__all__ = [
    "element_text",
    "element_texts",
    "parse_da",
    "parse_dt",
    "parse_tm",
    "private_text",
    "tag_label",
]

_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")  # YYYYMMDD, or the old YYYY.MM.DD of ACR-NEMA
_TM = re.compile(
    r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$"
)  # HH[MM[SS[.FFFFFF]]], colons allowed
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def tag_label(keyword: str, tag: int | tuple[int, int]) -> str:
    """`Units (0054,1001)`: how messages and suv.json name a tag."""
    value = Tag(tag)
    return f"{keyword} ({value.group:04X},{value.element:04X})"


def _as_text(value: object) -> str:
    if isinstance(value, bytes):  # an element of VR UN (implicit VR, or a private tag no dictionary knows)
        return value.decode("ascii", errors="replace").strip(" \x00")
    return str(value).strip(" \x00")


def element_texts(dataset: Dataset, tag: int | tuple[int, int] | BaseTag) -> list[str]:
    """Every value of an element as text (a multi-valued DS or CS has several); [] when it is absent or
    empty."""
    if Tag(tag) not in dataset:
        return []
    value = dataset[tag].value
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        texts = [_as_text(item) for item in value]
    else:
        text = _as_text(value)
        texts = text.split("\\") if isinstance(value, bytes) else [text]
    return [text for text in texts if text]


def element_text(dataset: Dataset, tag: int | tuple[int, int] | BaseTag) -> str | None:
    """The first value of an element as text, or None when it is absent or empty."""
    texts = element_texts(dataset, tag)
    return texts[0] if texts else None


def private_text(
    dataset: Dataset, group: int, element: int, creators: Iterable[str]
) -> tuple[str | None, str]:
    """A vendor's private element, found through its private creator, and how it was found.

    A private element's number is only meaningful within the block its creator reserved: `(7053,1000)`
    is Philips' SUV scale factor when `(7053,0010)` names "Philips PET Private Group", and something
    else entirely under another creator. So the element is looked up in the block of any of `creators`;
    a file that names no creator in that block (as anonymisers and test objects often leave it) is read at
    the element's usual place, and one whose block belongs to another creator is not read at all.
    `element` is the usual full element number (0x1000); the block offset is its low byte.
    """
    offset = element & 0xFF
    usual_block = element >> 8
    wanted = {creator.strip().upper() for creator in creators}
    for block in range(0x10, 0x100):
        creator = element_text(dataset, (group, block))
        if creator is None:
            continue
        if creator.upper() in wanted:
            return element_text(dataset, (group, (block << 8) | offset)), f"private creator {creator!r}"
    usual_creator = element_text(dataset, (group, usual_block))
    if usual_creator is not None:
        return None, f"block reserved by another private creator ({usual_creator!r})"
    return element_text(dataset, (group, element)), "no private creator in the file: read at its usual place"


def parse_da(text: str) -> dt.date:
    """A DICOM date (DA)."""
    match = _DA.match(text.strip())
    if not match:
        raise ValueError(f"not a DICOM date (YYYYMMDD): {text!r}")
    year, month, day = (int(part) for part in match.groups())
    return dt.date(year, month, day)


def parse_tm(text: str) -> dt.time:
    """A DICOM time (TM): HH, HHMM, HHMMSS or HHMMSS.FFFFFF (and the old colon-separated form)."""
    match = _TM.match(text.strip())
    if not match:
        raise ValueError(f"not a DICOM time (HHMMSS.FFFFFF): {text!r}")
    hours, minutes, seconds, fraction = match.groups()
    second = int(seconds or 0)
    if second == 60:  # a leap second, which DICOM allows
        second = 59
    micro = int((fraction or "0").ljust(6, "0"))
    return dt.time(int(hours), int(minutes or 0), second, micro)


def parse_dt(text: str) -> dt.datetime:
    """A DICOM date-time (DT): YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX].

    A time-zone offset is dropped: the acquisition and series times it is compared with carry none and are
    the scanner's local time, the zone such an offset describes."""
    match = _DT.match(text.strip())
    if not match:
        raise ValueError(f"not a DICOM date-time (YYYYMMDDHHMMSS.FFFFFF): {text!r}")
    year, month, day, hours, minutes, seconds, fraction, _offset = match.groups()
    second = min(int(seconds or 0), 59)
    micro = int((fraction or "0").ljust(6, "0"))
    return dt.datetime(
        int(year), int(month or 1), int(day or 1), int(hours or 0), int(minutes or 0), second, micro
    )
