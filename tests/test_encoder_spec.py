"""EncoderSpec: one description of the encoder that builds, exports and reloads it, and reads every old file form."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from usjepa.config import ModelConfig
from usjepa.models import EncoderSpec, build_encoder, build_vit, export_encoder, load_encoder_checkpoint
from usjepa.models.checkpoint_io import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny encoders: one thread is fastest

GEOMETRY = dict(depth=2, img_size=(32, 48), patch_size=8, in_chans=1, norm_mean=(0.4,), norm_std=(0.3,))


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    return build_vit(**{"arch": "vit_tiny", **GEOMETRY, **kw}).eval()


def _write_old_export(path, vit, model_config):
    """An encoder.safetensors exactly as usjepa wrote it before EncoderSpec (metadata by hand)."""
    name, kw = vit.timm_spec()
    meta = {"format": "usjepa-encoder", "timm_model": name, "model_config": json.dumps(model_config),
            "timm_kwargs": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})}
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path), metadata=meta)
    return path


def _old_forms(vit, rope):
    """The `model_config` forms older versions wrote for this encoder."""
    cli = dict(arch="vit_tiny", embed_dim=vit.embed_dim, depth=vit.depth, num_heads=vit.num_heads,
               img_size=list(vit.img_size), patch_size=vit.patch_size, in_chans=vit.in_chans,
               cls_token=bool(vit.num_prefix_tokens), norm_mean=vit.input_mean.flatten().tolist(),
               norm_std=vit.input_std.flatten().tolist(), pos_embed=vit.pos_embed_type)  # `usjepa export`
    run = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ModelConfig), dict(
        GEOMETRY, img_size=[32, 48], norm_mean=[0.4], norm_std=[0.3], pos_embed=vit.pos_embed_type, init="mae",
        drop_path=0.1, cls_token=bool(vit.num_prefix_tokens))))  # a run's whole model: section, sizes 0 = preset
    forms = {"cli": cli, "run": run}
    if not rope:  # from before RoPE and init existed: neither key
        forms["pre_rope"] = {k: v for k, v in run.items() if k not in ("pos_embed", "init")}
    return forms


@pytest.mark.parametrize("rope", [False, True])
def test_files_written_the_old_way_load_to_the_same_tokens(tmp_path, rope):
    vit = _encoder(pos_embed="rope" if rope else "sincos", cls_token=not rope)
    x = torch.rand(2, 1, 32, 48)
    for form, mc in _old_forms(vit, rope).items():
        export = _write_old_export(tmp_path / f"{form}.safetensors", vit, mc)
        ckpt = tmp_path / f"{form}.pt"  # a format-1 training checkpoint (no digest)
        torch.save({"config": {"model": mc}, "model": vit.state_dict(), "step": 3}, ckpt)
        for path in (export, ckpt):
            back = load_encoder_checkpoint(path)
            with torch.no_grad():
                assert torch.equal(back(x), vit(x)), (form, path.suffix)
            assert back.spec.norm_mean == pytest.approx(vit.spec.norm_mean)  # `usjepa export` wrote float32 values
            norms = dict(norm_mean=vit.spec.norm_mean, norm_std=vit.spec.norm_std)
            assert back.spec.replace(**norms) == vit.spec.replace(init="jepa", drop_path=0.0)
        # exporting the reloaded encoder again writes the same timm call as before, and reads back the same
        again = export_encoder(load_encoder_checkpoint(export), tmp_path / f"{form}_again.safetensors")
        from safetensors import safe_open

        with safe_open(str(export), "pt") as old, safe_open(str(again), "pt") as new:
            assert json.loads(new.metadata()["timm_kwargs"]) == json.loads(old.metadata()["timm_kwargs"])
            assert new.metadata()["timm_model"] == old.metadata()["timm_model"]
        with torch.no_grad():
            assert torch.equal(load_encoder_checkpoint(again)(x), vit(x))


def test_one_spec_from_config_encoder_and_file(tmp_path):
    cfg = OmegaConf.structured(ModelConfig(arch="vit_small", depth=1, img_size=[32, 32], patch_size=8, init="mae"))
    spec = EncoderSpec.from_model_config(cfg)
    assert (spec.embed_dim, spec.depth, spec.num_heads) == (384, 1, 6)  # preset sizes, explicit depth
    assert EncoderSpec.from_model_config(OmegaConf.to_object(cfg)) == spec  # dataclass form too
    enc = build_encoder(cfg)
    assert EncoderSpec.from_encoder(enc) == spec and EncoderSpec.from_dict(spec.to_dict()) == spec
    torch.manual_seed(1)
    a = spec.build()
    torch.manual_seed(1)
    b = build_vit("vit_small", depth=1, img_size=(32, 32), patch_size=8, in_chans=1, init="mae")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    path = export_encoder(enc, tmp_path / "e.safetensors", OmegaConf.to_container(cfg))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert EncoderSpec.from_dict(json.loads(f.metadata()["model_config"])) == spec
    assert spec.timm_kwargs() == dict(img_size=(32, 32), patch_size=8, in_chans=1, embed_dim=384, depth=1,
                                      num_heads=6, num_classes=0)


@pytest.mark.parametrize("bad, match", [
    (dict(patch_size=7), "not a multiple of the patch size 7"),
    (dict(num_heads=5), "not divisible by num_heads=5"),
    (dict(depth=True), "depth=True is not an integer"),
    (dict(pos_embed="learned"), "pos_embed must be one of sincos, rope"),
    (dict(norm_mean=[0.1, 0.2]), "norm_mean has 2 values"),
    (dict(arch="vit_gigantic"), "unknown architecture 'vit_gigantic'"),
])
def test_a_bad_spec_names_the_key(bad, match):
    mc = {**dict(img_size=[32, 32], patch_size=8, in_chans=1), **bad}
    with pytest.raises(ValueError, match=match):
        EncoderSpec.from_dict(mc)


def test_a_file_declaring_an_unbuildable_encoder_is_one_clear_error(tmp_path):
    vit = _encoder()
    path = _write_old_export(tmp_path / "e.safetensors", vit, dict(img_size=[32, 48], patch_size=8))
    with pytest.raises(CheckpointError, match=r"e\.safetensors.*lacks in_chans"):
        load_encoder_checkpoint(path)
