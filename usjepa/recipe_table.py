"""The recipe-versus-paper table of the README, generated from the recipe files: `python -m usjepa.recipe_table`.

Each row names a recipe file, a setting, the published value with its source, and reads our value from the
recipe as `usjepa config` resolves it. A row whose values differ (or whose published value is not stated) carries
the reason; tests/test_recipe_table.py fails when a recipe drifts from the paper without one, or when the README's
table is stale.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- recipe-table:start -->\n", "<!-- recipe-table:end -->"
UNSTATED = None  # the paper gives no value


@dataclass(frozen=True)
class Row:
    recipe: str  # file in configs/pretrain/
    key: str  # config key, or preset.<name> for a value of the recipe's mask preset
    published: Any  # the paper's value in our units (UNSTATED when the paper is silent)
    source: str
    reason: str = ""  # why ours differs or what we chose where the paper is silent


US, USRC, SALT, VPIX, MAE = "usjepa_vitb16.yaml", "usrc_jepa_vitb16.yaml", "salt_vitb16.yaml", "vpixel_vitb16.yaml", \
    "mae_vitb16.yaml"
T6, T5, T4 = "US-JEPA Table 6", "SALT Table 5", "SALT Table 4"

ROWS: tuple[Row, ...] = (
    # ---------------------------------------------------------------- US-JEPA (Radhachandran et al. 2026)
    Row(US, "model.arch", "vit_base", T6),
    Row(US, "model.patch_size", 16, T6),
    Row(US, "model.img_size", [224, 224], T6),
    Row(US, "model.cls_token", UNSTATED, "I-JEPA code", "none: I-JEPA's ViT, on which the recipe builds, has none"),
    Row(US, "model.pos_embed", "sincos", "I-JEPA code"),
    Row(US, "teacher.family", "urfm", "US-JEPA §4.4"),
    Row(US, "predictor.depth", 12, T6),
    Row(US, "predictor.embed_dim", 384, T6),
    Row(US, "predictor.num_heads", UNSTATED, T6, "12: I-JEPA uses the encoder's head count"),
    Row(US, "objective.loss", "smooth_l1", "US-JEPA §4.4"),
    Row(US, "objective.target_norm", UNSTATED, "I-JEPA code", "non-affine LayerNorm on targets, as all JEPA code"),
    Row(US, "preset.context_scale", (0.85, 1.0), T6),
    Row(US, "preset.target_scale", (0.075, 0.125), T6),
    Row(US, "preset.num_targets", 4, T6),
    Row(US, "preset.target_aspect", (0.75, 1.5), T6),
    Row(US, "preset.min_keep", 10, T6),
    Row(US, "mask.sampler", "reference", "I-JEPA MaskCollator"),
    Row(US, "data.batch_size", 128, T6),
    Row(US, "train.epochs", 100, T6),
    Row(US, "optim.warmup_epochs", 10, T6),
    Row(US, "optim.start_lr", 5e-6, T6),
    Row(US, "optim.lr", 5e-5, T6),
    Row(US, "optim.final_lr", 5e-7, T6),
    Row(US, "optim.weight_decay", 0.04, T6),
    Row(US, "optim.final_weight_decay", 0.4, T6),
    Row(US, "optim.betas", UNSTATED, T6, "(0.9, 0.999): the torch defaults I-JEPA uses"),
    Row(US, "optim.clip_grad", UNSTATED, T6, "none, as I-JEPA"),
    Row(US, "data.balance", "dataset", "US-JEPA §5.1.1"),
    Row(US, "data.balance_cap", 50000, "US-JEPA §5.1.1"),
    Row(US, "data.preprocess", "usjepa", "US-JEPA §4.3", "gray, colour marks < 5% inpainted (method unstated: "
        "normalised Gaussian fill), 2-98 percentile rescale; the whole frame is kept"),
    Row(US, "data.crop_scale", [0.6, 1.0], T6),
    Row(US, "data.hflip", UNSTATED, T6, "H/V flips are listed without a probability: 0.5 each"),
    Row(US, "data.vflip", UNSTATED, T6, "as hflip"),
    Row(US, "data.augment_policy", UNSTATED, T6, "blur, speckle and contrast are listed without parameters: our "
        "`usjepa` policy"),
    Row(US, "train.val_fraction", 0.05, "US-JEPA App. D.1"),
    Row(USRC, "mask.region.enabled", True, "US-JEPA §4.2"),
    Row(USRC, "mask.region.tau", UNSTATED, "US-JEPA §4.2", "4 valid patches per block (tau is not published)"),
    Row(USRC, "data.preprocess", "usrc", "US-JEPA §4.2", "fan crop with the outside cleared, then the US-JEPA rescale"),
    # ---------------------------------------------------------------- SALT stage 2 (Li et al. 2025)
    Row(SALT, "model.arch", "vit_base", T4, "the paper's ViT-B row (its main results are ViT-L and larger)"),
    Row(SALT, "model.patch_size", 16, T5),
    Row(SALT, "model.img_size", [224, 224], T5),
    Row(SALT, "model.pos_embed", "rope", "SALT App. B"),
    Row(SALT, "model.cls_token", False, "V-JEPA 2 code"),
    Row(SALT, "predictor.depth", 12, T4),
    Row(SALT, "predictor.embed_dim", 384, T4),
    Row(SALT, "predictor.num_heads", 16, T4),
    Row(SALT, "predictor.per_block", False, "V-JEPA code"),
    Row(SALT, "predictor.zero_init_mask_tokens", True, "V-JEPA code"),
    Row(SALT, "objective.loss", "l1", "SALT Eq. 2.1"),
    Row(SALT, "preset.generators", ((8, 0.15), (2, 0.7)), "SALT Table 5, V-JEPA config"),
    Row(SALT, "preset.aspect", (0.75, 1.5), T5),
    Row(SALT, "mask.sampler", "reference", "V-JEPA multiblock3d"),
    Row(SALT, "data.batch_size", 3072, T5),
    Row(SALT, "optim.start_lr", 2e-4, T5),
    Row(SALT, "optim.lr", 6.25e-4, T5),
    Row(SALT, "optim.final_lr", 1e-6, T5),
    Row(SALT, "optim.warmup", 10000, T5),
    Row(SALT, "optim.weight_decay", 0.04, T5),
    Row(SALT, "optim.final_weight_decay", 0.4, T5),
    Row(SALT, "optim.clip_grad", 0.02, T5, "as printed (V-JEPA uses 10); see the notes for how it is applied"),
    Row(SALT, "optim.betas", [0.9, 0.95], T5),
    Row(SALT, "train.steps", 160000, "SALT Fig. 2"),
    Row(SALT, "data.crop_scale", [0.3, 1.0], T5),
    Row(SALT, "data.crop_ratio", [0.75, 1.35], T5),
    Row(SALT, "data.augment_policy", "none", "V-JEPA 2 code"),
    # ---------------------------------------------------------------- SALT stage 1, V-Pixel
    Row(VPIX, "objective.name", "mae", "SALT §2.2", "VideoMAE-style pixel reconstruction, on single frames"),
    Row(VPIX, "mask.preset", "salt", "SALT Table 5"),
    Row(VPIX, "model.pos_embed", "rope", "SALT App. B"),
    Row(VPIX, "objective.mae.decoder_dim", UNSTATED, "SALT §2.2", "MAE's decoder: 512 wide"),
    Row(VPIX, "objective.mae.decoder_depth", UNSTATED, "SALT §2.2", "MAE's decoder: 8 blocks"),
    Row(VPIX, "objective.mae.norm_pix_loss", UNSTATED, "SALT §2.2", "VideoMAE's default: per-patch normalised pixels"),
    Row(VPIX, "optim.lr", 6.25e-4, T5),
    Row(VPIX, "optim.clip_grad", 0.02, T5),
    Row(VPIX, "data.batch_size", 3072, T5),
    Row(VPIX, "train.steps", 80000, "SALT Fig. 2"),
    # ---------------------------------------------------------------- MAE (He et al. 2022)
    Row(MAE, "mask.random_ratio", 0.75, "MAE §4"),
    Row(MAE, "optim.blr", 1.5e-4, "MAE PRETRAIN.md"),
    Row(MAE, "data.batch_size", 4096, "MAE PRETRAIN.md", "1024; the lr follows through blr x batch / 256"),
    Row(MAE, "optim.start_lr", 0.0, "MAE main_pretrain.py"),
    Row(MAE, "optim.final_lr", 0.0, "MAE main_pretrain.py"),
    Row(MAE, "optim.warmup", 0.05, "MAE PRETRAIN.md"),
    Row(MAE, "optim.weight_decay", 0.05, "MAE PRETRAIN.md"),
    Row(MAE, "optim.betas", [0.9, 0.95], "MAE main_pretrain.py"),
    Row(MAE, "objective.mae.decoder_dim", 512, "MAE models_mae.py"),
    Row(MAE, "objective.mae.decoder_depth", 8, "MAE models_mae.py"),
    Row(MAE, "objective.mae.norm_pix_loss", True, "MAE PRETRAIN.md"),
    Row(MAE, "model.init", "mae", "MAE models_mae.py"),
    Row(MAE, "data.crop_scale", [0.2, 1.0], "MAE main_pretrain.py"),
    Row(MAE, "train.steps", UNSTATED, "MAE PRETRAIN.md", "80k steps (MAE counts 800 epochs of ImageNet)"),
)

# differences that no single config value shows
NOTES: tuple[str, ...] = (
    "SALT and V-Pixel are video recipes (16 frames, tubelet 2, temporal mask scale 1); ours are their 2-D "
    "version (one frame, 16 x 16 patches), so the ~90% masking SALT quotes for video reads ~81% / ~94% here "
    "(V-JEPA's own sampler in 2-D at batch 128; `usjepa masks` prints it).",
    "Reference masks are drawn from each batch's item seeds, not upstream's global step counter and torch RNG: "
    "the statistics are the collators', the streams are not (exact resume needs them seeded per item).",
    "RoPE rotates each pair by its own frequency; V-JEPA 2's released code duplicates frequencies across "
    "pairs (flagged in its source, kept for its weights). Ours equals timm's Eva axial RoPE, which it exports to.",
    "SALT's grad clip of 0.02 is applied as one norm over student and predictor from step 0; V-JEPA clips each "
    "module after warmup, SALT does not say how.",
    "The loss averages over a block's tokens, then blocks, then images; upstream averages over all elements. "
    "They agree when blocks in a batch have equal sizes, as reference masks do without region conditioning.",
    "US-JEPA picks the lowest validation loss per epoch; we evaluate every train.val_every steps on "
    "train.val_batches batches.",
)


@functools.cache
def _recipe(recipe: str):
    from usjepa.config import load_config

    return load_config(ROOT / "configs" / "pretrain" / recipe)


def recipe_value(recipe: str, key: str) -> Any:
    """Our value of `key` in configs/pretrain/<recipe>, resolved as `usjepa config` does."""
    from omegaconf import OmegaConf

    from usjepa.masks import preset_recipe

    cfg = _recipe(recipe)
    if key.startswith("preset."):
        return preset_recipe(cfg.mask.preset, cfg.mask)[key.split(".", 1)[1]]
    v = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(1, abs(b))
    return a == b


def _fmt(v: Any) -> str:
    if v is UNSTATED:
        return "not stated"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def recipe_markdown() -> str:
    """The README table and the list of remaining differences, from ROWS, NOTES and the recipe files."""
    lines = ["| recipe | setting | published | ours | source | note |", "|---|---|---|---|---|---|"]
    for r in ROWS:
        ours = recipe_value(r.recipe, r.key)
        mark = "" if r.published is not UNSTATED and same(ours, r.published) else "**≠** " if \
            r.published is not UNSTATED else ""
        lines.append(f"| `{r.recipe}` | `{r.key}` | {_fmt(r.published)} | {mark}{_fmt(ours)} | {r.source} | "
                     f"{r.reason} |")
    lines += ["", "Differences no single setting shows:", ""] + [f"- {n}" for n in NOTES]
    return "\n".join(lines) + "\n"


def refresh(readme: Path) -> bool:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START.strip()} / {END} markers")
    head, rest = text.split(START, 1)
    new = head + START + recipe_markdown() + END + rest.split(END, 1)[1]
    if new != text:
        readme.write_text(new)
        return True
    return False


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    print("updated" if refresh(path) else "up to date", path)
