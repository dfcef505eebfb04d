"""What a DICOM's header claims, checked: frames against the pixel data, and the PatientID (counted when missing).

Both read element headers and offsets only, never the pixels, so a folder scan stays cheap.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

log = logging.getLogger(__name__)


def _native_frame_bytes(hdr) -> int:
    """Bytes of one frame of uncompressed pixel data (1-bit data is packed)."""
    pixels = int(hdr.Rows) * int(hdr.Columns) * int(getattr(hdr, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(hdr, "BitsAllocated", 8) or 8)
    return -(-pixels * bits // 8)


@lru_cache(maxsize=256)
def _pixel_frames(path: str, mtime: float, declared: int) -> int | None:
    """Frames the pixel data of a DICOM holds (reads element headers and offsets, not the pixels)."""
    import pydicom
    from pydicom.encaps import parse_basic_offsets, parse_fragments
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path, defer_size=256)
    raw = ds.get_item(Tag(0x7FE0, 0x0010), keep_deferred=True)
    if raw is None:  # no pixel data at all: the decoder reports the file as bad
        return None
    length = getattr(raw, "length", None)
    if length is None:  # read in full (small): its own length
        length = len(ds.PixelData)
    if length != 0xFFFFFFFF:  # native (uncompressed) pixel data
        per_frame = _native_frame_bytes(ds)
        return length // per_frame if per_frame else None
    if "ExtendedOffsetTable" in ds:
        return len(ds.ExtendedOffsetTable) // 8
    endian = "<" if raw.is_little_endian else ">"
    with open(path, "rb") as f:  # encapsulated: a Basic Offset Table entry per frame, else at least a fragment each
        f.seek(raw.value_tell)
        offsets = parse_basic_offsets(f, endianness=endian)
        fragments, _ = parse_fragments(f, endianness=endian)
    if offsets:
        return len(offsets)
    return fragments if fragments < declared or declared == 1 else None  # more fragments: frames may span several


def dicom_pixel_frames(path: str, declared: int) -> int | None:
    """Frames the pixel data holds, checked against the `declared` NumberOfFrames; None when it cannot be told."""
    try:
        return _pixel_frames(path, os.path.getmtime(path), int(declared))
    except Exception as e:  # unreadable: the decoder reports the file as bad
        log.debug("cannot count the pixel-data frames of %s: %s", path, e)
        return None


def _dicom_patient(path: str) -> tuple[str | None, str]:
    """(PatientID, '') or (None, why it is missing)."""
    try:
        import pydicom

        pid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", None)
    except Exception as e:
        return None, f"unreadable header ({type(e).__name__}: {e})"
    pid = "" if pid is None else str(pid).strip()
    return (pid, "") if pid else (None, "no PatientID")


def dicom_patients(files: list[str], kinds: list[str]) -> list[str | None]:
    """PatientID of every DICOM (None for other files); files without one are counted and logged, not hidden."""
    out, missing = [], []
    for f, k in zip(files, kinds, strict=True):
        pid, why = _dicom_patient(f) if k == "dicom" else (None, "")
        out.append(pid)
        if why:
            missing.append(f"{f} ({why})")
    if missing:
        n_dicom = sum(k == "dicom" for k in kinds)
        log.warning("%d of %d DICOM files have no usable PatientID, so each counts as its own patient (frames of one "
                    "patient may then land in different splits; set data.patient_regex): %s%s", len(missing), n_dicom,
                    "; ".join(missing[:3]), " ..." if len(missing) > 3 else "")
    return out
