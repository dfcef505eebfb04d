"""`usjepa data preview PATH_OR_CONFIG... --out DIR [--n N]`: what the model will see, before any GPU hour is spent.

For each item (frame or pane) it writes `<name>_region.png` (the item's region in its source file's pixel grid,
0/255) and `<name>_input.png` (the tensor the dataset gives the model, through the training code path), one contact
sheet `preview.png` (source with the region outlined and removed marks tinted, beside the input) and `items.csv` /
`skipped.csv` (what was left out and why, also printed).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from usjepa.config import ModelConfig
from usjepa.data.errors import BadItem, DataError
from usjepa.data.layout import detect_layout
from usjepa.data.panes import item_name
from usjepa.data.spec import DataConfig

log = logging.getLogger(__name__)

CONFIG_EXT = (".yaml", ".yml")
THUMB = (320, 240)  # source thumbnail box (W, H) on the contact sheet
INPUT_SIDE = 160  # model input thumbnail side
COLUMNS = 3


@dataclass
class PreviewResult:
    items: pd.DataFrame  # one row per previewed item
    skipped: pd.DataFrame  # path, frame, pane, reason
    sheet: Path
    tiles: list = field(default_factory=list, repr=False)


def parse_inputs(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """[(config YAML or data path, its k=v overrides)]: overrides follow the input they apply to."""
    groups: list[tuple[str, list[str]]] = []
    for tok in tokens:
        if "=" in tok and not os.path.exists(tok):
            if not groups:
                raise DataError(f"override '{tok}' comes before any config or path; write it after the input it "
                                "changes, e.g. `usjepa data preview scans/ data.preprocess=usjepa`")
            groups[-1][1].append(tok)
        elif not os.path.exists(tok):
            raise DataError(f"'{tok}' is neither a file nor a folder (nor a key=value override); give image / DICOM / "
                            "video files or folders, or a pretraining config YAML")
        else:
            groups.append((tok, []))
    if not groups:
        raise DataError("nothing to preview: give image / DICOM / video files or folders, or a config YAML")
    return groups


@dataclass
class _PathSchema:
    """Settings for bare data paths: the data section and the model (its img_size) at their defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


def _dataset(target: str, overrides: list[str], n: int):
    """The configured dataset cut to <= n source rows spread over the table (its frames expand into panes)."""
    from usjepa.config import ConfigError, load_config, load_spec, spec_of
    from usjepa.data.build import assign_splits, load_table
    from usjepa.data.dataset import UltrasoundDataset
    from usjepa.data.panes import check_choices

    if target.lower().endswith(CONFIG_EXT):
        cfg = load_spec(target, overrides)
    else:
        cfg = load_config(None, overrides, schema=_PathSchema)
        try:
            check_choices(cfg.data)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        cfg.data.source = "folder"
        cfg.data.root = target
        cfg = spec_of(cfg, _PathSchema)
    data = cfg.data
    table = assign_splits(load_table(data), data, f"data ({target})")
    if len(table) > n:
        table = table.iloc[np.unique(np.linspace(0, len(table) - 1, n).round().astype(int))]
    return UltrasoundDataset(table, data, tuple(cfg.model.img_size), augment=False, source=data.source)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _rgb(img: np.ndarray) -> np.ndarray:
    u8 = img if img.dtype == np.uint8 else _to_u8(img)
    return np.repeat(u8[..., None], 3, 2) if u8.ndim == 2 else u8


def _outline(mask: np.ndarray) -> np.ndarray:
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    return edge | (np.roll(edge, 1, 0) & mask) | (np.roll(edge, 1, 1) & mask)  # 2 px, readable when shrunk


def annotate(frame: np.ndarray, region: np.ndarray | None, lay) -> np.ndarray:
    """Source frame (RGB uint8) with the item's region outlined (green), burned-in parts left out tinted (magenta),
    small colour marks to be inpainted (cyan) and Doppler pixels (orange outline)."""
    vis = _rgb(frame).astype(np.float32)
    if lay is not None:
        for mask, colour in ((lay.removed, (255, 0, 255)), (lay.marks, (0, 255, 255))):
            if mask is not None and mask.any():
                vis[mask] = 0.35 * vis[mask] + 0.65 * np.asarray(colour, np.float32)
        if lay.doppler is not None and lay.doppler.any():
            vis[_outline(lay.doppler)] = (255, 140, 0)
    if region is not None:
        vis[_outline(region)] = (0, 255, 0)
    return vis.astype(np.uint8)


def _thumb(rgb: np.ndarray, box: tuple[int, int], nearest: bool = False) -> Image.Image:
    im = Image.fromarray(rgb)
    s = min(box[0] / im.width, box[1] / im.height)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))),
                     Image.NEAREST if nearest else Image.BILINEAR)


def contact_sheet(tiles: list[tuple[np.ndarray, np.ndarray | None, str]], path: Path) -> Path:
    """tiles: (annotated source RGB, model input RGB or None when skipped, caption) -> one PNG grid."""
    font = ImageFont.load_default(size=12)
    tw, th = THUMB[0] + INPUT_SIDE + 24, THUMB[1] + 36
    rows = max(1, -(-len(tiles) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * tw, rows * th), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (src, inp, caption) in enumerate(tiles):
        x, y = (i % COLUMNS) * tw + 8, (i // COLUMNS) * th + 6
        sheet.paste(_thumb(src, THUMB), (x, y))
        if inp is not None:
            sheet.paste(_thumb(inp, (INPUT_SIDE, INPUT_SIDE), nearest=True), (x + THUMB[0] + 8, y))
        for k, line in enumerate(caption.split("\n")[:2]):
            draw.text((x, y + THUMB[1] + 2 + 13 * k), line, fill=(255, 90, 90) if inp is None else (230, 230, 230),
                      font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _input_u8(image) -> np.ndarray:
    """The model input tensor [C, H, W] in [0, 1] -> uint8 [H, W] (1 channel) or [H, W, 3]."""
    x = image.numpy()
    return _to_u8(x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1))


def preview(tokens: list[str], out_dir: str | os.PathLike, n: int = 16) -> PreviewResult:
    """Preview up to n items of each input (config YAML with its overrides, or data files / folders)."""
    from usjepa.data.sources import decode

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, skipped, tiles, names = [], [], [], set()
    layouts: dict = {}

    def frame_of(path: str, kind: str, frame: int):
        key = (path, frame)
        if key not in layouts:
            try:
                img = decode(path, kind, max(frame, 0))
                layouts[key] = (img, detect_layout(img))
            except BadItem:
                layouts[key] = (None, None)
        return layouts[key]

    for target, overrides in parse_inputs(tokens):
        ds = _dataset(target, overrides, n)
        for s in ds.skipped:  # colour Doppler frames / panes left out by data.colour_frames=skip
            skipped.append({k: s[k] for k in ("path", "frame", "pane", "reason")})
            img, lay = frame_of(s["path"], s["kind"], s["frame"])
            if img is not None:
                tiles.append((annotate(img, None, lay), None, f"{Path(s['path']).name} pane {s['pane']}\n"
                                                               f"skipped: {s['reason']}"))
        for i in range(min(n, len(ds))):
            rec = ds.table.iloc[i]
            path, kind, frame, pane = str(rec["path"]), str(rec["kind"]), int(rec["frame"]), int(rec["pane"])
            name = item_name(path, frame, pane)
            while name in names:
                name += "_"
            names.add(name)
            item = ds[i]
            if item is None:
                bad = next((r for r in ds.bad_report() if r["index"] == i), {"reason": "unreadable"})
                skipped.append({"path": path, "frame": frame, "pane": pane, "reason": bad["reason"]})
                continue
            full, lay = frame_of(path, kind, frame)
            cut, region = ds.source_view(i, max_side=0)
            box = ds._views[i].box(full.shape[:2]) or (0, full.shape[0], 0, full.shape[1])
            src_region = np.zeros(full.shape[:2], bool)
            src_region[box[0]:box[1], box[2]:box[3]] = region if region is not None else True
            Image.fromarray(src_region.view(np.uint8) * np.uint8(255)).save(out / f"{name}_region.png")
            inp = _input_u8(item["image"])
            Image.fromarray(inp).save(out / f"{name}_input.png")
            colour = str(rec.get("colour", ""))
            items.append({"name": name, "path": path, "frame": frame, "pane": pane, "colour": colour,
                          "box": "" if pane < 0 else " ".join(map(str, box)), "layout": lay.kind if lay else "",
                          "region_share": round(float(src_region[box[0]:box[1], box[2]:box[3]].mean()), 4),
                          "input_shape": "x".join(map(str, item["image"].shape))})
            tiles.append((annotate(full, src_region, lay), _rgb(inp),
                          f"{name}\n{lay.kind if lay else ''} pane {pane} {colour or 'B-mode'} -> "
                          f"{items[-1]['input_shape']}"))
    items_df = pd.DataFrame(items, columns=["name", "path", "frame", "pane", "colour", "box", "layout",
                                            "region_share", "input_shape"])
    skipped_df = pd.DataFrame(skipped, columns=["path", "frame", "pane", "reason"])
    items_df.to_csv(out / "items.csv", index=False)
    skipped_df.to_csv(out / "skipped.csv", index=False)
    sheet = contact_sheet(tiles, out / "preview.png")
    return PreviewResult(items_df, skipped_df, sheet, tiles)
