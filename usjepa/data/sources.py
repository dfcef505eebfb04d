"""Where items come from: folders, CSV/Parquet manifests, DICOM, videos and the UltraBench layout -> one item table.

Every source yields a pandas DataFrame with the columns in `COLUMNS` (one row per frame); `decode(row)` turns a row
into a float32 image in [0, 1] ([H, W] or [H, W, 3]) and an optional fan mask, raising `BadItem` for unreadable input.
"""

from __future__ import annotations

import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from usjepa.data.dicom_checks import dicom_patients, dicom_pixel_frames
from usjepa.data.errors import BadItem, DataError

log = logging.getLogger(__name__)

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_EXT = {".dcm", ".dicom"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
COLUMNS = ["path", "kind", "frame", "mask_path", "label", "target", "patient_id", "organ", "dataset", "split"]
_ALIASES = {"path": ("path", "image", "image_path", "file", "filepath", "filename"),
            "mask_path": ("mask_path", "scan_mask", "mask", "region_mask"),
            "patient_id": ("patient_id", "patient", "subject", "subject_id", "study_id"),
            "split": ("split", "subset", "fold")}
# columns naming the video / study / sequence a frame came from: the group when no patient is named
GROUP_COLUMNS = ("group", "group_id", "video", "video_id", "study", "study_uid", "study_instance_uid", "series_id",
                 "sequence_id", "clip_id")


def kind_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return "dicom" if ext in DICOM_EXT else "video" if ext in VIDEO_EXT else "image"


def _finish(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Fill missing standard columns with neutral values and order them first."""
    defaults = {"kind": None, "frame": -1, "mask_path": "", "label": -1, "target": np.nan, "patient_id": None,
                "organ": "unknown", "dataset": dataset, "split": ""}
    for c, v in defaults.items():
        if c not in df.columns:
            df[c] = v
    df["kind"] = [k if isinstance(k, str) and k else kind_of(p) for k, p in zip(df["kind"], df["path"], strict=True)]
    known = lambda v: isinstance(v, str) and v.strip() != "" or not (isinstance(v, str) or pd.isna(v))  # noqa: E731
    pid = list(df["patient_id"])
    for col in (c for c in GROUP_COLUMNS if c in df.columns):  # no patient: the video / study is the group
        pid = [p if known(p) or not known(g) else f"{col}:{g}" for p, g in zip(pid, df[col], strict=True)]
    if "patient_given" not in df.columns:  # a video file is a group of its frames even without an id
        df["patient_given"] = [known(p) or k == "video" for p, k in zip(pid, df["kind"], strict=True)]
    df["patient_id"] = [str(p).strip() if known(p) else Path(f).stem for p, f in zip(pid, df["path"], strict=True)]
    df["mask_path"] = df["mask_path"].fillna("").astype(str)
    df["split"] = df["split"].fillna("").astype(str).str.lower().replace({"validation": "val", "valid": "val"})
    for c in ("organ", "dataset"):
        df[c] = df[c].fillna("unknown").astype(str)
    df["frame"] = df["frame"].fillna(-1).astype(np.int64)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]].reset_index(drop=True)


def _expand_frames(df: pd.DataFrame, stride: int, max_frames: int) -> pd.DataFrame:
    """One row per sampled frame of every DICOM / video row whose frame is -1.

    A DICOM whose pixel data holds fewer frames than its header declares is sampled over the frames it holds, plus
    one row for its first missing frame, so the disagreement shows once in the bad-item report (not once per frame).
    """
    rows = []
    for rec in df.to_dict("records"):
        if rec["kind"] in ("dicom", "video") and int(rec["frame"]) < 0:
            n = count_frames(rec["path"], rec["kind"])
            held = dicom_pixel_frames(rec["path"], n) if rec["kind"] == "dicom" and n > 0 else None
            usable = n if held is None else min(n, held)
            idx = sample_frames(usable, stride, max_frames)
            rows.extend({**rec, "frame": int(i)} for i in idx)
            if n == 0:  # unreadable header: keep one row, so it is reported as bad when read
                rows.append({**rec, "frame": 0})
            elif usable < n:  # the header promises frames that are not there: one row to report it
                log.warning("%s: the header declares %d frames (NumberOfFrames) but the pixel data holds %d; using "
                            "those %d", rec["path"], n, held, held)
                rows.append({**rec, "frame": usable})
            elif held is not None and held > n:
                log.warning("%s: the pixel data holds %d frames but the header declares %d (NumberOfFrames); reading "
                            "%d", rec["path"], held, n, n)
        else:
            rows.append(rec)
    return pd.DataFrame(rows, columns=df.columns)


def sample_frames(n: int, stride: int = 1, max_frames: int = 0) -> np.ndarray:
    """Frame indices 0, stride, 2 stride...; at most max_frames of them, evenly spread (0 = no limit)."""
    idx = np.arange(0, n, max(1, stride))
    if max_frames and len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, max_frames).round().astype(int)]
    return idx


def count_frames(path: str, kind: str) -> int:
    try:
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(getattr(ds, "NumberOfFrames", 1) or 1)
        import av

        with av.open(path) as c:
            s = c.streams.video[0]
            if s.frames:
                return int(s.frames)
            return sum(1 for _ in c.decode(s))
    except Exception as e:  # reported as a bad item when read
        log.warning("cannot count frames of %s (%s): %s", kind, path, e)
        return 0


def scan_folder(root: str, kinds: set[str], label_from_folder: bool = False, patient_regex: str = "",
                stride: int = 1, max_frames: int = 0) -> pd.DataFrame:
    """All files of the given kinds under root (recursive, sorted). Patient = regex group 1 on the relative path,
    the DICOM PatientID, or the file stem; label = first sub-folder name when label_from_folder."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data.root '{root}' is not a folder; point it at a folder of images / DICOM / videos")
    exts = (IMAGE_EXT if "image" in kinds else set()) | (DICOM_EXT if "dicom" in kinds else set()) | \
        (VIDEO_EXT if "video" in kinds else set())
    files = sorted(str(p) for p in base.rglob("*") if p.suffix.lower() in exts and not p.name.startswith("."))
    if not files:
        raise DataError(f"no {'/'.join(sorted(kinds))} files under '{root}' (extensions {sorted(exts)})")
    rel = [os.path.relpath(f, root) for f in files]
    df = pd.DataFrame({"path": files, "kind": [kind_of(f) for f in files]})
    if patient_regex:
        pat = re.compile(patient_regex)
        df["patient_id"] = [(m.group(1) if (m := pat.search(r)) else None) for r in rel]
    else:
        df["patient_id"] = dicom_patients(files, df["kind"].tolist())
    if label_from_folder:  # class = first sub-folder; label = its index among the sorted class names
        names = [r.split(os.sep)[0] if os.sep in r else "" for r in rel]
        classes = sorted({n for n in names if n})
        df["label_name"] = names
        df["label"] = [classes.index(n) if n else -1 for n in names]
    df = _finish(df, base.name)
    return _expand_frames(df, stride, max_frames)


def read_manifest(path: str, root: str = "", stride: int = 1, max_frames: int = 0) -> pd.DataFrame:
    """A CSV or Parquet table with a path column (path/image/file...), optional mask, label, target, patient,
    organ, dataset, split, frame columns. Relative paths resolve against `root` or the manifest's folder."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest '{path}' does not exist; set data.manifest to a CSV or Parquet file")
    try:
        df = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
    except Exception as e:
        raise DataError(f"cannot read manifest '{path}': {e}") from e
    for std, names in _ALIASES.items():
        if std not in df.columns:
            hit = next((n for n in names if n in df.columns), None)
            if hit is not None:
                df[std] = df[hit]
    if "path" not in df.columns:
        raise DataError(f"manifest '{path}' has no path column (one of {_ALIASES['path']}); columns are "
                        f"{list(df.columns)}")
    base = Path(root) if root else p.parent
    df["path"] = [str(v) if os.path.isabs(str(v)) else str(base / str(v)) for v in df["path"]]
    df["mask_path"] = [("" if (isinstance(v, float) and np.isnan(v)) or v == "" else
                        str(v) if os.path.isabs(str(v)) else str(base / str(v)))
                       for v in df.get("mask_path", pd.Series([""] * len(df)))]
    return _expand_frames(_finish(df, p.parent.name), stride, max_frames)


_UB_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test", "train_val": "train"}


def _ultrabench_groups(t: pd.DataFrame, dataset: str, groups: str, where: str) -> tuple[list[str], list[bool]]:
    """(group id, given) per record: the patient, else the source video / image file (UltraBench's own grouping for
    POCUS), else none; data.groups=none makes each image its own group, data.groups=<key> uses that record key."""
    if groups == "none":
        return [f"{dataset}:{v}" for v in t["image"]], [True] * len(t)
    if groups not in ("", "auto"):
        if groups not in t.columns:
            raise DataError(f"{where}: data.groups={groups} is not a key of its records (keys: {list(t.columns)})")
        col = groups
    else:
        col = "patient" if "patient" in t.columns else "source" if "source" in t.columns else None
    if col is None:
        return [Path(v).stem for v in t["image"]], [False] * len(t)
    given = [not (v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "") for v in t[col]]
    return ([f"{dataset}:{v}" if g else Path(i).stem for v, g, i in zip(t[col], given, t["image"], strict=True)],
            given)


def read_ultrabench(root: str, val_fraction: float = 0.1, seed: int = 0, groups: str = "auto") -> pd.DataFrame:
    """An UltraBench processed dataset folder (images/, masks/scan/, {train,validation,test,train_val}.json), or a
    folder of them. Records are grouped by patient, else by their source video / image (`source`); train_val.json
    without a validation file is split into train and val by those groups."""
    from usjepa.data.splits import make_group_splits, require_groups

    base = Path(root)
    dirs = [base] if any((base / f"{s}.json").exists() for s in _UB_SPLITS) else \
        sorted(d for d in base.iterdir() if d.is_dir() and any((d / f"{s}.json").exists() for s in _UB_SPLITS)) \
        if base.is_dir() else []
    if not dirs:
        raise DataError(f"'{root}' is not an UltraBench dataset: expected train.json / validation.json / test.json or "
                        "train_val.json (with images/ and masks/scan/) in it or in its sub-folders")
    frames = []
    for d in dirs:
        parts = []
        for name, split in _UB_SPLITS.items():
            f = d / f"{name}.json"
            if not f.exists():
                continue
            try:
                recs = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"cannot read UltraBench split file {f}: {e}") from e
            t = pd.DataFrame.from_records(recs)
            if "image" not in t.columns:
                raise DataError(f"{f} has no 'image' key in its records; is this an UltraBench processed folder?")
            t["split"] = split
            dataset = re.sub(r"_v\d+(\.\d+)*$", "", d.name)
            t["patient_id"], t["patient_given"] = _ultrabench_groups(t, dataset, groups, str(f))
            if name == "train_val" and not (d / "validation.json").exists() and val_fraction > 0:
                require_groups(bool(t["patient_given"].all()), groups, str(f), "splitting it into train and val")
                t["split"] = make_group_splits(t["patient_id"].tolist(), (1 - val_fraction, val_fraction, 0.0), seed)
            parts.append(t)
        t = pd.concat(parts, ignore_index=True)
        t["path"] = [str(d / v) for v in t["image"]]
        if "scan_mask" in t.columns:
            t["mask_path"] = [str(d / v) if isinstance(v, str) and v else "" for v in t["scan_mask"]]
        if "pathology" in t.columns and "label" in t.columns:
            t["label_name"] = t["pathology"].astype(str)
        t["dataset"] = re.sub(r"_v\d+(\.\d+)*$", "", d.name)
        frames.append(t)
    return _finish(pd.concat(frames, ignore_index=True), base.name)


# ----------------------------------------------------------------------------- decoding


def to_float(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Any integer / float pixel array -> float32 in [0, 1] (integers by their bit depth)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (1.0 / 255.0)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.float32)
        lo = float(a.min()) if np.issubdtype(arr.dtype, np.signedinteger) and a.min() < 0 else 0.0
        top = (2 ** bits - 1) if bits else (255.0 if a.max() <= 255 else 65535.0 if a.max() <= 65535 else a.max())
        return np.clip((a - lo) / max(top - lo, 1.0), 0.0, 1.0)
    a = arr.astype(np.float32)
    if np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0:
        return a
    a = np.nan_to_num(a)
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-12)


def read_image(path: str, max_side: int = 0) -> np.ndarray:
    """PIL decode -> float32 [H, W] or [H, W, 3]; `max_side` lets JPEG decode at reduced scale."""
    with Image.open(path) as im:
        if max_side and im.format == "JPEG":
            im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (max_side, max_side))
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L", "RGB"):
            arr = np.asarray(im)
        elif mode in ("LA", "La", "1"):
            arr = np.asarray(im.convert("L"))
        else:  # P, RGBA, CMYK, YCbCr, LAB, HSV...
            arr = np.asarray(im.convert("RGB"))
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return to_float(arr)


@lru_cache(maxsize=2)
def _dicom_header(path: str, mtime: float):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def read_dicom(path: str, frame: int = 0) -> np.ndarray:
    """One frame of a (multi-frame) DICOM: MONOCHROME1 inverted, YBR converted to RGB -> float32 in [0, 1]."""
    from pydicom.pixels import pixel_array

    mtime = os.path.getmtime(path)
    hdr = _dicom_header(path, mtime)
    n = int(getattr(hdr, "NumberOfFrames", 1) or 1)
    if not 0 <= frame < n:
        raise BadItem(f"frame {frame} out of range (file has {n})", path)
    held = dicom_pixel_frames(path, n)
    if held is not None and frame >= held:
        raise BadItem(f"frame {frame} out of range: the header declares {n} frames (NumberOfFrames) but the pixel "
                      f"data holds {held}", path)
    arr = pixel_array(path, index=frame if n > 1 else None)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and n == 1:
        arr = arr[0]
    photo = str(getattr(hdr, "PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(getattr(hdr, "BitsStored", 8) or 8)
    if photo == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, hdr)
        bits = 16 if arr.dtype != np.uint8 else 8
    if np.issubdtype(arr.dtype, np.signedinteger):
        arr = arr.astype(np.int32) - int(arr.min())
        out = to_float(arr.astype(np.uint32))
    else:
        out = to_float(arr, bits if arr.dtype != np.uint8 else None)
    if photo == "MONOCHROME1":
        out = 1.0 - out
    return out[..., :3] if out.ndim == 3 else out


def read_video_frame(path: str, frame: int) -> np.ndarray:
    """Frame `frame` of a video (PyAV: seek to the nearest keyframe before it, decode forward) -> float32 RGB."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        if frame > 0 and rate and s.time_base:
            start = s.start_time or 0
            target = start + int(round(frame / float(rate) / float(s.time_base)))
            c.seek(target, stream=s, backward=True, any_frame=False)
            for fr in c.decode(s):
                if fr.pts is None or fr.pts >= target - 0.5 / float(rate) / float(s.time_base):
                    return to_float(fr.to_ndarray(format="rgb24"))
            raise BadItem(f"frame {frame} is past the end of the video", path)
        for i, fr in enumerate(c.decode(s)):
            if i == frame:
                return to_float(fr.to_ndarray(format="rgb24"))
    raise BadItem(f"frame {frame} is past the end of the video", path)


def read_mask(path: str) -> np.ndarray:
    """A region (fan) mask file: any non-zero pixel is inside (UltraBench stores 0/1, the simulator 0/255)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    return arr > 0


def decode(path: str, kind: str, frame: int = -1, max_side: int = 0) -> np.ndarray:
    """Read one item's pixels, raising BadItem (missing / empty / corrupt / truncated / unreadable)."""
    if not os.path.exists(path):
        raise BadItem("missing file", path)
    if os.path.getsize(path) == 0:
        raise BadItem("empty file (0 bytes)", path)
    try:
        if kind == "dicom":
            img = read_dicom(path, max(frame, 0))
        elif kind == "video":
            img = read_video_frame(path, max(frame, 0))
        else:
            img = read_image(path, max_side)
    except BadItem:
        raise
    except OSError as e:
        msg = str(e)
        raise BadItem("truncated file" if "truncated" in msg else f"corrupt or unreadable ({msg})", path) from e
    except Exception as e:  # decoders raise many types (SyntaxError, ValueError, av errors, pydicom errors)
        raise BadItem(f"corrupt or unreadable ({type(e).__name__}: {e})", path) from e
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 8:
        raise BadItem(f"not a 2-D image (shape {img.shape})", path)
    if float(img.max()) <= 1.0 / 255.0:
        raise BadItem("all-black frame", path)
    if float(img.max() - img.min()) < 1e-6:
        raise BadItem("blank frame (one constant value)", path)
    return img
