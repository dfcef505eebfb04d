import pytest
import torch
from omegaconf import OmegaConf

from usjepa.eval.encoders import build_probe_encoder
from usjepa.eval.spec import ProbeEncoderSpec
from usjepa.models import build_vit, export_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # small probe workloads: one thread is fastest

TINY = dict(arch="vit_tiny", embed_dim=64, depth=2, num_heads=2, img_size=[32, 32], patch_size=8, in_chans=1,
            cls_token=True)


def _export(path, seed=0):
    torch.manual_seed(seed)
    vit = build_vit(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in TINY.items()})
    return export_encoder(vit, path, dict(TINY))


def _spec(**kw):
    return OmegaConf.merge(OmegaConf.structured(ProbeEncoderSpec), kw)


def test_identity_follows_the_weights_not_the_file(tmp_path):
    a = build_probe_encoder("a", _spec(path=str(_export(tmp_path / "a.safetensors"))))
    b = build_probe_encoder("b", _spec(path=str(_export(tmp_path / "copy.safetensors"))))
    c = build_probe_encoder("c", _spec(path=str(_export(tmp_path / "c.safetensors", seed=1))))
    assert a.identity == b.identity != c.identity
    assert a.has_cls and a.use_intermediate and not any(p.requires_grad for p in a.module.parameters())
    assert not a.module.training


def test_random_init_copies_the_architecture_with_fresh_seeded_weights(tmp_path):
    specs = {"student": _spec(path=str(_export(tmp_path / "s.safetensors"))),
             "floor": _spec(kind="random", like="student", seed=0),
             "floor2": _spec(kind="random", like="student", seed=1)}
    s = build_probe_encoder("student", specs["student"], specs)
    r = build_probe_encoder("floor", specs["floor"], specs)
    again = build_probe_encoder("floor", specs["floor"], specs)
    other = build_probe_encoder("floor2", specs["floor2"], specs)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(r.module) == shapes(s.module)
    torch.testing.assert_close(r.module.input_mean, s.module.input_mean)
    assert r.identity == again.identity and len({s.identity, r.identity, other.identity}) == 3
    x = torch.rand(2, 1, 32, 32)
    assert r.module(x).shape == s.module(x).shape == (2, 16, 64)


def test_the_random_floor_of_a_rope_student_keeps_rope_and_its_init_scheme(tmp_path):
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", embed_dim=64, depth=2, num_heads=2, img_size=(32, 32), patch_size=8, in_chans=1,
                    cls_token=False, pos_embed="rope", init="mae")
    path = export_encoder(vit, tmp_path / "rope.safetensors", dict(TINY, cls_token=False, pos_embed="rope"))
    specs = {"student": _spec(path=str(path)), "floor": _spec(kind="random", like="student", seed=0)}
    student = build_probe_encoder("student", specs["student"], specs).module
    floor = build_probe_encoder("floor", specs["floor"], specs).module
    assert floor.spec.pos_embed == "rope" and floor.spec.init == student.spec.init  # not a sin-cos twin
    assert {k for k in floor.state_dict()} == {k for k in vit.state_dict()}


def test_random_like_a_missing_name_or_a_cycle_is_explained(tmp_path):
    with pytest.raises(ValueError, match="neither an encoder of this config"):
        build_probe_encoder("r", _spec(kind="random", like="nope"), {"r": _spec(kind="random", like="nope")})
    specs = {"a": _spec(kind="random", like="b"), "b": _spec(kind="random", like="a")}
    with pytest.raises(ValueError, match="cycle"):
        build_probe_encoder("a", specs["a"], specs)


def test_timm_models_follow_the_encoder_contract():
    spec = _spec(kind="timm", timm_model="vit_tiny_patch16_224",
                 timm_options=dict(img_size=32, patch_size=8, depth=2, in_chans=3))
    enc = build_probe_encoder("timm", spec)
    x = torch.rand(2, 1, 32, 32)  # grayscale in: the adapter makes 3 channels and normalises
    tokens = enc.module(x)
    assert tokens.shape == (2, 16, enc.module.embed_dim) and enc.module.patch_size == 8
    layers = enc.module.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and layers[-1][1].shape == (2, enc.module.embed_dim)
    torch.testing.assert_close(layers[-1][0], tokens)  # the last block, normed, is what forward gives


def test_teacher_zoo_specs_are_probed_through_their_own_output(tmp_path):
    opts = dict(depth=2, img_size=[32, 32], in_chans=1, embed_dim=64, num_heads=2, seed=3)
    final = build_probe_encoder("t", _spec(kind="teacher", teacher=dict(family="random", patch_size=8, options=opts)))
    assert final.use_intermediate  # its output is the last block: CLS and last-k are available
    inner = build_probe_encoder("t", _spec(kind="teacher", teacher=dict(family="random", patch_size=8, layer=0,
                                                                        options=opts)))
    assert not inner.use_intermediate and inner.identity != final.identity


def test_timm_weights_load_through_the_teacher_zoo(tmp_path):
    """A timm file is read by the zoo's timm family (safe read, strict keys) into the zoo's one wrapper."""
    import timm

    from teachers.frozen import FrozenTeacher
    from usjepa.models.checkpoint_io import CheckpointError

    opts = dict(img_size=32, patch_size=8, depth=2, in_chans=3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **opts).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    enc = build_probe_encoder("timm", _spec(kind="timm", timm_model="vit_tiny_patch16_224", timm_options=opts,
                                            path=str(tmp_path / "w.pt")))
    assert isinstance(enc.module, FrozenTeacher) and enc.module.family == "timm"
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    with torch.no_grad():
        want = model.forward_features((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))[:, 1:]
    torch.testing.assert_close(enc.module(x), want)
    torch.save({"pos_embed": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt"):  # strict keys: another model is refused by name
        build_probe_encoder("timm", _spec(kind="timm", timm_model="vit_tiny_patch16_224", timm_options=opts,
                                          path=str(tmp_path / "bad.pt")))
