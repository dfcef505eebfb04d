"""Every teacher family: a random model in that family's own file format loads through `teachers.load` and gives
the reference model's patch tokens, at the native size and at a second, non-square size."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.beit import Beit
from timm.models.beit import checkpoint_filter_fn as beit_filter
from timm.models.vision_transformer import VisionTransformer

import teachers
from usjepa.models import build_vit, export_encoder
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.models.layers import sincos_2d

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
ATOL = 1e-5


def load(*args, **kw) -> teachers.FrozenTeacher:
    """`teachers.load` in fp32: these tests check weight mapping exactly, which bf16 rounding would blur."""
    return teachers.load(*args, precision="fp32", **kw)


def imagenet(x: torch.Tensor) -> torch.Tensor:
    return (x.expand(-1, 3, -1, -1) - IMAGENET[0]) / IMAGENET[1]


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (zero-initialised biases, tables and tokens would hide mapping bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.02 if p.ndim > 1 else 0.1
            base = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_vit(img: int = 32, patch: int = 8, **kw) -> VisionTransformer:
    kw = dict(dict(embed_dim=192, depth=2, num_heads=3, num_classes=0, global_pool="", fc_norm=False), **kw)
    return VisionTransformer(img_size=img, patch_size=patch, **kw)


def resized(pos: torch.Tensor, old: tuple, new: tuple, **kw) -> torch.Tensor:
    """Reference position resampling written out directly: [1, h*w, D] -> [1, H*W, D]."""
    d = pos.shape[-1]
    x = pos.reshape(1, *old, d).permute(0, 3, 1, 2)
    return F.interpolate(x, mode="bicubic", **kw).permute(0, 2, 3, 1).reshape(1, -1, d)


def ref_tokens(model: torch.nn.Module, x: torch.Tensor, prefix: int) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)[:, prefix:]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def mae_like(seed: int = 0) -> VisionTransformer:
    m = randomise(tiny_vit(), seed)
    with torch.no_grad():  # MAE's fixed sin-cos positions with a zero CLS slot
        m.pos_embed.copy_(torch.cat([torch.zeros(1, 192), sincos_2d(192, (4, 4))]).unsqueeze(0))
    return m


def decoder_keys(d: int = 192) -> dict:
    return {"mask_token": torch.randn(1, 1, d), "decoder_embed.weight": torch.randn(d, 192),
            "decoder_pos_embed": torch.randn(1, 17, d), "decoder_blocks.0.attn.qkv.weight": torch.randn(3 * d, d),
            "decoder_norm.weight": torch.ones(d), "decoder_pred.weight": torch.randn(8 * 8 * 3, d)}


def second_size_mae(model: VisionTransformer, x2: torch.Tensor) -> torch.Tensor:
    """MAE / I-JEPA convention at another grid: bicubic by output size, no antialiasing."""
    g = (x2.shape[-2] // 8, x2.shape[-1] // 8)
    prefix = model.num_prefix_tokens
    ref = tiny_vit(img=tuple(x2.shape[-2:]), class_token=model.cls_token is not None)
    sd = dict(model.state_dict())
    pos = sd["pos_embed"]
    sd["pos_embed"] = torch.cat([pos[:, :prefix], resized(pos[:, prefix:], (4, 4), g, size=g, align_corners=False)], 1)
    ref.load_state_dict(sd)
    return ref_tokens(ref.eval(), imagenet(x2), prefix)


X1 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X2 = torch.rand(2, 1, 48, 64, generator=torch.Generator().manual_seed(2))  # gray, non-square, another grid


@pytest.mark.parametrize("layout", ["flat_full", "model_wrapped", "ddp_prefixed"])
def test_mae_family_layouts(tmp_path, layout):
    m = mae_like()
    sd = dict(m.state_dict())
    if layout == "flat_full":  # USF-MAE: flat dict with the decoder
        obj = {**sd, **decoder_keys()}
    elif layout == "model_wrapped":  # MAE release / UltraFedFM: under 'model', with extra entries beside it
        obj = {"model": {**sd, **decoder_keys()}, "epoch": 399, "args": "Namespace(...)"}
    else:
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}}
    path = tmp_path / "mae.pth"
    torch.save(obj, path)
    t = load("mae", str(path))
    assert (t.embed_dim, t.patch_size, t.num_prefix_tokens) == (192, 8, 1)
    close(t(X1), ref_tokens(m, imagenet(X1), 1))
    close(t(X2), second_size_mae(m, X2))


def test_urfm_family(tmp_path):
    m = mae_like(seed=3)
    path = tmp_path / "mae_vit_base_patch16_dec768d8b_all_biomedclip_1199.pth"
    torch.save({"model": "mae_vit_base_patch16_dec768d8b", "epoch": 1199,
                "ema_state_dict": {**m.state_dict(), **decoder_keys(d=96)}}, path)
    t = load("urfm", str(path))
    close(t(X1), ref_tokens(m, imagenet(X1), 1))
    close(t(X2), second_size_mae(m, X2))


def test_ijepa_family_uses_target_encoder(tmp_path):
    target = randomise(tiny_vit(class_token=False), seed=4)
    context = randomise(tiny_vit(class_token=False), seed=5)
    for m in (target, context):
        with torch.no_grad():
            m.pos_embed.copy_(sincos_2d(192, (4, 4)).unsqueeze(0))
    ddp = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    torch.save({"encoder": ddp(context), "target_encoder": ddp(target),
                "predictor": {"module.predictor_embed.weight": torch.randn(96, 192)},
                "opt": torch.optim.AdamW(context.parameters()).state_dict(), "scaler": None,
                "epoch": 300, "loss": 0.12, "batch_size": 2048, "world_size": 16, "lr": 1e-3}, path)
    t = load("ijepa", str(path))
    assert t.num_prefix_tokens == 0
    close(t(X1), ref_tokens(target, imagenet(X1), 0))
    close(t(X2), second_size_mae(target, X2))
    ctx = load("ijepa", str(path), which="encoder")
    close(ctx(X1), ref_tokens(context, imagenet(X1), 0))


def dinov2_release(m: VisionTransformer, regs: bool, swiglu: bool = False) -> dict:
    """timm reference -> DINOv2 release layout (CLS position in pos_embed, register_tokens, mask_token, w12/w3)."""
    sd = dict(m.state_dict())
    pos0 = 0.1 * torch.randn(1, 1, m.embed_dim)
    if regs:  # timm: no_embed_class, CLS position folded into cls_token
        sd["cls_token"] = sd["cls_token"] - pos0
        sd["pos_embed"] = torch.cat([pos0, sd["pos_embed"]], dim=1)
        sd["register_tokens"] = sd.pop("reg_token")
    if swiglu:
        sd = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v for k, v in sd.items()}
    sd["mask_token"] = torch.zeros(1, m.embed_dim)
    return sd


def original_pos(patch_pos: torch.Tensor, grid: tuple, regs: bool) -> torch.Tensor:
    """DINOv2's `interpolate_pos_encoding` rule, written out: [1, M*M, D] -> [1, h*w, D].

    Its hub builds models without registers with interpolate_offset=0.1 and no antialiasing (interpolation by
    scale factor (h + 0.1) / M), and `*_reg` models with offset 0 and antialiasing (interpolation to the size).
    """
    m, d = math.isqrt(patch_pos.shape[1]), patch_pos.shape[-1]
    x = patch_pos.reshape(1, m, m, d).permute(0, 3, 1, 2)
    if regs:
        x = F.interpolate(x, size=grid, mode="bicubic", antialias=True)
    else:
        x = F.interpolate(x, scale_factor=((grid[0] + 0.1) / m, (grid[1] + 0.1) / m), mode="bicubic", antialias=False)
    assert tuple(x.shape[-2:]) == tuple(grid)
    return x.permute(0, 2, 3, 1).reshape(1, -1, d)


def dinov2_reference(m: VisionTransformer, size: tuple, regs: bool, rule: bool | None = None,
                     **kw) -> VisionTransformer:
    """The timm reference `m` rebuilt for input `size` with positions resampled by DINOv2's rule (for `rule`
    registers or not: by default the model's own kind)."""
    p = m.patch_embed.proj.kernel_size[0]
    grid = (size[0] // p, size[1] // p)
    ref = tiny_vit(**dict(kw, img=size, patch=p))
    sd = dict(m.state_dict())
    patch_pos = sd["pos_embed"][:, 0 if regs else 1:]
    new = original_pos(patch_pos, grid, regs if rule is None else rule)
    sd["pos_embed"] = new if regs else torch.cat([sd["pos_embed"][:, :1], new], dim=1)
    ref.load_state_dict(sd)
    return ref.eval()


@pytest.mark.parametrize("regs,swiglu", [(True, False), (False, False), (True, True)])
def test_dinov2_release_format(tmp_path, regs, swiglu):
    from timm.layers import SwiGLUPacked

    kw = dict(img=70, patch=14, init_values=1e-5, reg_tokens=4 if regs else 0, no_embed_class=regs)
    if swiglu:
        kw.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=2 * 8 / 3)
    m = randomise(tiny_vit(**kw), seed=6)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(dinov2_release(m, regs, swiglu), path)
    t = load("dinov2", str(path))
    prefix = 1 + (4 if regs else 0)
    assert (t.patch_size, t.num_prefix_tokens, t.grid((70, 70))) == (14, prefix, (5, 5))
    x1 = torch.rand(2, 3, 70, 70)
    close(t(x1), ref_tokens(m, imagenet(x1), prefix))
    x2 = torch.rand(2, 1, 56, 84)  # another, non-square grid
    close(t(x2), ref_tokens(dinov2_reference(m, (56, 84), regs, **{k: v for k, v in kw.items() if k != "img"}),
                            imagenet(x2), prefix))


@pytest.mark.parametrize("regs", [True, False], ids=["reg4", "no_registers"])
def test_dinov2_positions_match_the_original_at_any_size(tmp_path, regs):
    """A 518 px (37x37) DINOv2 release file at 224, 448 and a non-square size, within 1e-4 of the original's rule."""
    kw = dict(embed_dim=64, depth=1, num_heads=2, init_values=1e-5, reg_tokens=4 if regs else 0, no_embed_class=regs)
    m = randomise(tiny_vit(img=518, patch=14, **kw), seed=11)
    with torch.no_grad():  # trained DINOv2 positions are smooth: low frequencies plus some detail
        m.pos_embed.copy_(torch.randn(m.pos_embed.shape, generator=torch.Generator().manual_seed(12)))
    path = tmp_path / ("dinov2_vits14_reg4_pretrain.pth" if regs else "dinov2_vits14_pretrain.pth")
    torch.save(dinov2_release(m, regs), path)
    t = load("dinov2", str(path), num_heads=2)
    assert t.backbone.native_grid == (37, 37)
    for size in ((224, 224), (448, 448), (224, 350)):
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[1]))
        want = ref_tokens(dinov2_reference(m, size, regs, **kw), imagenet(x), t.num_prefix_tokens)
        got = t(x)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4, (size, (got - want).abs().max())
    # the other kind's rule gives clearly other tokens at 224 px, so this test tells the rules apart
    other = dinov2_reference(m, (224, 224), regs, rule=not regs, **kw)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(224))
    assert (ref_tokens(other, imagenet(x), t.num_prefix_tokens) - t(x)).abs().max() > 1e-2


def dinov2_training_state(m: VisionTransformer, chunks: int = 0) -> dict:
    """A DINOv2 SSLMetaArch network's state dict: backbone.* (optionally in block chunks), dino_head.*, ibot_head.*."""
    sd = dinov2_release(m, regs=m.reg_token is not None)
    if chunks:
        per = len(m.blocks) // chunks
        sd = {(f"blocks.{int(k.split('.')[1]) // per}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
              for k, v in sd.items()}
    d = m.embed_dim
    heads = {"dino_head.mlp.0.weight": torch.randn(32, d), "dino_head.last_layer.weight_g": torch.ones(64, 1),
             "ibot_head.mlp.0.weight": torch.randn(32, d), "ibot_head.last_layer.weight_v": torch.randn(64, 8)}
    return {**{f"backbone.{k}": v for k, v in sd.items()}, **heads}


def test_dinov2_training_checkpoints_load_with_default_options(tmp_path):
    kw = dict(img=70, patch=14, init_values=1e-5, depth=4, reg_tokens=4, no_embed_class=True)
    teacher, student = randomise(tiny_vit(**kw), seed=13), randomise(tiny_vit(**kw), seed=14)
    x = torch.rand(2, 3, 70, 70)
    # eval/<iteration>/teacher_checkpoint.pth, with blocks in 2 chunks as DINOv2's training configs save them
    torch.save({"teacher": dinov2_training_state(teacher, chunks=2)}, tmp_path / "teacher_checkpoint.pth")
    t = load("dinov2", str(tmp_path / "teacher_checkpoint.pth"))
    close(t(x), ref_tokens(teacher, imagenet(x), 5))
    assert t.arch_facts.get("block_chunks") == 2 and "0.1" in t.arch_facts.get("pos_interpolation")
    # model_*.pth: both networks under `model`, beside the optimizer state
    both = {**{f"teacher.{k}": v for k, v in dinov2_training_state(teacher).items()},
            **{f"student.{k}": v for k, v in dinov2_training_state(student).items()}}
    torch.save({"model": both, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "iteration": 9},
               tmp_path / "model_0000009.pth")
    close(load("dinov2", str(tmp_path / "model_0000009.pth"))(x), ref_tokens(teacher, imagenet(x), 5))
    close(load("dinov2", str(tmp_path / "model_0000009.pth"), which="student")(x), ref_tokens(student, imagenet(x), 5))
    with pytest.raises(CheckpointError, match="single network"):
        load("dinov2", str(tmp_path / "teacher_checkpoint.pth"), which="student")


def usfm_like(img: int = 32) -> Beit:
    m = Beit(img_size=img, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=0, global_pool="",
             use_fc_norm=False, use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
             init_values=0.1, qkv_bias=True)
    m = randomise(m, seed=7)
    with torch.no_grad():  # trained tables are O(1): they shape attention a lot
        m.rel_pos_bias.relative_position_bias_table.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(8))
    return m


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's table interpolator (in the reference) warns
def test_usfm_family_shared_rel_pos_bias(tmp_path):
    m = usfm_like()
    sd = dict(m.state_dict())
    assert "rel_pos_bias.relative_position_bias_table" in sd and "pos_embed" not in sd
    sd["mask_token"] = torch.randn(1, 1, 192)
    sd["rel_pos_bias.relative_position_index"] = m.rel_pos_bias.relative_position_index.clone()
    path = tmp_path / "USFM_latest.pth"
    torch.save(sd, path)
    t = load("usfm", str(path))
    close(t(X1), ref_tokens(m, imagenet(X1), 1))
    # the shared bias matters: zeroing it changes the tokens, so it really was loaded and used
    zeroed = dict(sd, **{"rel_pos_bias.relative_position_bias_table": torch.zeros_like(
        sd["rel_pos_bias.relative_position_bias_table"])})
    torch.save(zeroed, tmp_path / "zeroed.pth")
    assert (load("usfm", str(tmp_path / "zeroed.pth"))(X1) - t(X1)).abs().max() > 1e-3
    # another, non-square grid: timm's own BEiT filter resizes the table for a model built at that size
    ref = Beit(img_size=(48, 64), patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=0, global_pool="",
               use_fc_norm=False, use_abs_pos_emb=False, use_shared_rel_pos_bias=True, init_values=0.1)
    filtered = beit_filter({k: v for k, v in sd.items() if k != "mask_token"}, ref)
    ref.load_state_dict(filtered)
    close(t(X2), ref_tokens(ref.eval(), imagenet(X2), 1))


def test_timm_family(tmp_path):
    m = randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=10))
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 10, "arch": "vit_tiny_patch16_224", "state_dict": m.state_dict(), "metric": 71.3}, path)
    t = load("timm", str(path), arch="vit_tiny_patch16_224", img_size=32, model_kwargs={"depth": 2})
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (m.pretrained_cfg["mean"], m.pretrained_cfg["std"]))
    assert t.norm == "model"
    close(t(X1), ref_tokens(m, (X1 - mean) / std, 1))
    dyn = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=10,
                            dynamic_img_size=True)
    dyn.load_state_dict(m.state_dict())
    close(t(X2), ref_tokens(dyn.eval(), (X2.expand(-1, 3, -1, -1) - mean) / std, 1))


def test_timm_family_wrapper_prefixes_and_the_checkpoints_own_statistics(tmp_path, caplog):
    m = randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=10))
    opts = dict(arch="vit_tiny_patch16_224", img_size=32, model_kwargs={"depth": 2})
    # timm train.py: weights under state_dict (here also wrapped as module.model.*), statistics in `args`
    args = argparse.Namespace(model="vit_tiny_patch16_224", mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2], epochs=3)
    wrapped = {f"module.model.{k}": v for k, v in m.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped, "args": args}, tmp_path / "checkpoint-3.pth.tar")
    with caplog.at_level("INFO", logger="teachers"):
        t = load("timm", str(tmp_path / "checkpoint-3.pth.tar"), **opts)
    close(t(X1), ref_tokens(m, (X1 - 0.3) / 0.2, 1))
    assert "training 'args'" in t.norm_description and "training 'args'" in caplog.text
    # the Hugging Face hub layout: pretrained_cfg in a config.json beside the weights
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save(m.state_dict(), hub / "pytorch_model.bin")
    (hub / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224",
                                                 "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.4, 0.3]}}))
    t = load("timm", str(hub / "pytorch_model.bin"), **opts)
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    close(t(X1), ref_tokens(m, (X1 - mean) / std, 1))
    assert "config.json" in t.norm_description
    # no statistics anywhere: timm's default for the name, and the teacher says so
    torch.save(m.state_dict(), tmp_path / "plain.pth")
    assert "timm's default pretrained_cfg" in load("timm", str(tmp_path / "plain.pth"), **opts).norm_description


def test_native_family_export_and_training_checkpoint(tmp_path):
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", depth=2, img_size=(32, 32), patch_size=8, in_chans=1, norm_mean=(0.4,),
                    norm_std=(0.3,)).eval()
    mc = dict(arch="vit_tiny", depth=2, embed_dim=0, num_heads=0, img_size=[32, 32], patch_size=8, in_chans=1,
              cls_token=True, norm_mean=[0.4], norm_std=[0.3])
    export_encoder(vit, tmp_path / "encoder.safetensors", model_cfg=mc)
    torch.save({"config": {"model": mc}, "model": vit.state_dict(), "step": 5}, tmp_path / "latest.pt")
    for f in ("encoder.safetensors", "latest.pt"):
        t = load("native", str(tmp_path / f))
        assert t.in_chans == 1 and t.norm == "model"
        with torch.no_grad():
            close(t(X1), vit(X1))  # RGB in, averaged to the encoder's one channel
            close(t(X2), vit(X2))
    old_name = load("usjepa", str(tmp_path / "latest.pt"))  # the family's former name still loads the same
    assert old_name.family == "native"
    with torch.no_grad():
        close(old_name(X1), vit(X1))


def test_random_family_is_seeded():
    a = load("random", arch="vit_tiny", depth=2, patch_size=8, seed=3)
    b = load("random", arch="vit_tiny", depth=2, patch_size=8, seed=3)
    c = load("random", arch="vit_tiny", depth=2, patch_size=8, seed=4)
    torch.manual_seed(3)
    ref = build_vit("vit_tiny", depth=2, patch_size=8, in_chans=3).eval()
    with torch.no_grad():
        close(a(X1), ref(X1))
    close(a(X2), b(X2))
    assert (a(X1) - c(X1)).abs().max() > 1e-3
    assert a.identity["seed"] == 3


def test_layer_choice_and_mean_last_k(tmp_path):
    m = mae_like()
    path = tmp_path / "mae.pth"
    torch.save({"model": m.state_dict()}, path)
    x = imagenet(X1)
    with torch.no_grad():
        feats = m.forward_intermediates(x, indices=[0, 1], norm=False, output_fmt="NLC", intermediates_only=True)
    first = load("mae", str(path), layer=0, final_norm=False)
    close(first(X1), feats[0][:, :])
    normed = load("mae", str(path), layer=0)
    close(normed(X1), m.norm(feats[0]))
    mean2 = load("mae", str(path), mean_last_k=2)
    close(mean2(X1), (m.norm(feats[0]) + m.norm(feats[1])) / 2)
    inter = mean2.get_intermediate_layers(X1, n=2)
    close(inter[0][0], m.norm(feats[0]))
    assert inter[1][1].shape == (2, 192)
    with pytest.raises(ValueError, match="mean_last_k"):
        load("mae", str(path), layer=0, mean_last_k=2)
    with pytest.raises(ValueError, match="layer=5"):
        load("mae", str(path), layer=5)


def test_tokens_on_grid_patch14_teacher_meets_patch16_student(tmp_path):
    t = load("random", arch="vit_tiny", depth=1, patch_size=14)
    x = torch.rand(1, 1, 224, 224)
    native = t(x)  # [1, 256, D] on 16x16
    assert native.shape[1] == 256
    small = t.tokens_on_grid(x, (14, 14))
    assert small.shape == (1, 196, t.embed_dim)
    grid = native.transpose(1, 2).reshape(1, -1, 16, 16)
    # area resampling: each output token averages the input tokens its cell overlaps
    torch.testing.assert_close(small[0, 0], grid[0, :, :2, :2].mean(dim=(1, 2)))
    same = t.tokens_on_grid(x, (16, 16))
    torch.testing.assert_close(same, native)
    assert t.tokens_on_grid(x, (20, 18)).shape == (1, 360, t.embed_dim)  # bilinear up
    assert math.isfinite(float(small.sum()))
