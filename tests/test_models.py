import pytest
import timm
import torch

from usjepa.models import Predictor, build_vit, export_encoder, load_encoder_checkpoint
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.models.mae_decoder import MAEDecoder, patchify


def _vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=(64, 96), patch_size=16, in_chans=1, depth=2)
    args.update(kw)
    return build_vit("vit_tiny", **args).eval()


def test_presets_and_shapes_non_square():
    m = _vit()
    x = torch.rand(2, 1, 64, 96)
    assert m.grid((64, 96)) == (4, 6)
    assert m(x).shape == (2, 24, 192)
    keep = torch.tensor([[0, 5, 7], [1, 2, 23]])
    assert m(x, keep).shape == (2, 3, 192)
    # a visible subset gives the tokens of a model that only saw those patches: not a slice of the full forward
    assert not torch.allclose(m(x, keep)[0], m(x)[0, [0, 5, 7]])


def test_student_loads_into_timm_strict_and_gives_same_tokens():
    m = _vit()
    t = timm.create_model("vit_tiny_patch16_224", img_size=(64, 96), in_chans=1, depth=2, num_classes=0).eval()
    t.load_state_dict(m.state_dict(), strict=True)
    x = torch.rand(2, 1, 64, 96)
    torch.testing.assert_close(m(x), t.forward_features(m.prepare(x))[:, 1:], atol=1e-5, rtol=1e-5)


def test_export_file_loads_with_timm_checkpoint_path(tmp_path):
    m = _vit()
    p = export_encoder(
        m,
        tmp_path / "enc.safetensors",
        {"arch": "vit_tiny", "depth": 2, "img_size": [64, 96], "patch_size": 16, "in_chans": 1, "cls_token": True},
    )
    t = timm.create_model(
        "vit_tiny_patch16_224", img_size=(64, 96), in_chans=1, depth=2, num_classes=0, checkpoint_path=str(p)
    ).eval()
    x = torch.rand(1, 1, 64, 96)
    torch.testing.assert_close(m(x), t.forward_features(m.prepare(x))[:, 1:], atol=1e-5, rtol=1e-5)
    back = load_encoder_checkpoint(p)
    torch.testing.assert_close(back(x), m(x))


def test_no_cls_model_exports_to_timm_avg_pool():
    m = _vit(cls_token=False)
    t = timm.create_model(
        "vit_tiny_patch16_224", **{k: v for k, v in m.timm_kwargs().items() if k not in ("embed_dim", "num_heads")}
    ).eval()
    t.load_state_dict(m.state_dict(), strict=True)
    x = torch.rand(2, 1, 64, 96)
    torch.testing.assert_close(m(x), t.forward_features(m.prepare(x)), atol=1e-5, rtol=1e-5)


def test_channel_handling_gray_and_rgb_inputs_agree():
    m = _vit(in_chans=3)
    g = torch.rand(2, 1, 64, 96)
    torch.testing.assert_close(m(g), m(g.expand(-1, 3, -1, -1)))
    m1 = _vit(in_chans=1)
    torch.testing.assert_close(m1(g.expand(-1, 3, -1, -1)), m1(g))


def test_other_image_size_uses_exact_sincos():
    m = _vit()
    out = m(torch.rand(1, 1, 48, 48))
    assert out.shape == (1, 9, 192)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m(torch.rand(1, 1, 50, 48))


def test_intermediate_layers():
    m = _vit(depth=3)
    x = torch.rand(2, 1, 64, 96)
    layers = m.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and layers[-1][0].shape == (2, 24, 192) and layers[-1][1].shape == (2, 192)
    torch.testing.assert_close(layers[-1][0], m(x))


def test_padded_keep_equals_unpadded_per_sample():
    m = _vit()
    x = torch.rand(2, 1, 64, 96)
    keep = torch.tensor([[0, 3, 4, 9, 10], [2, 7, 8, 0, 0]])
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = m(x, keep, valid)
    torch.testing.assert_close(out[1, :3], m(x[1:], keep[1:, :3])[0], atol=1e-5, rtol=1e-5)


def test_predictor_per_block_and_union_shapes_and_isolation():
    torch.manual_seed(0)
    p = Predictor(in_dim=192, out_dim=64, embed_dim=32, depth=2, num_heads=4, per_block=True).eval()
    ctx = torch.randn(2, 5, 192)
    cidx = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    tidx = torch.tensor([[[10, 11], [12, 13]], [[14, 15], [16, 17]]])
    out = p(ctx, cidx, tidx, (4, 6))
    assert out.shape == (2, 2, 2, 64)
    # per-block: predictions for block 0 do not depend on block 1's positions
    tidx2 = tidx.clone()
    tidx2[:, 1] = torch.tensor([20, 21])
    torch.testing.assert_close(p(ctx, cidx, tidx2, (4, 6))[:, 0], out[:, 0])
    p.per_block = False
    assert not torch.allclose(p(ctx, cidx, tidx2, (4, 6))[:, 0], p(ctx, cidx, tidx, (4, 6))[:, 0])


def test_mae_decoder_ignores_padding_slots():
    torch.manual_seed(0)
    d = MAEDecoder(192, 16, 1, embed_dim=32, depth=1, num_heads=4).eval()
    vis = torch.randn(1, 3, 192)
    keep = torch.tensor([[1, 4, 0]])
    valid = torch.tensor([[True, True, False]])
    a = d(vis, keep, (4, 6), valid)
    b = d(vis[:, :2], keep[:, :2], (4, 6))
    torch.testing.assert_close(a, b)
    assert patchify(torch.rand(2, 1, 64, 96), 16).shape == (2, 24, 256)


def test_bad_checkpoints_are_refused_with_names(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_encoder_checkpoint(tmp_path / "empty.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a usjepa checkpoint"):
        load_encoder_checkpoint(tmp_path / "other.pt")


# ----------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("cls_token", [False, True])
def test_rope_encoder_exports_to_timm_eva_strictly_and_reads_back(tmp_path, cls_token):
    m = _vit(pos_embed="rope", cls_token=cls_token)
    assert "pos_embed" not in m.state_dict()
    p = export_encoder(m, tmp_path / "rope.safetensors")
    name, kw = m.timm_spec()
    t = timm.create_model(name, **kw, checkpoint_path=str(p)).eval()  # timm loads checkpoint files strictly
    assert type(t).__name__ == "Eva"
    x = torch.rand(2, 1, 64, 96)
    torch.testing.assert_close(m(x), t.forward_features(m.prepare(x))[:, m.num_prefix_tokens:], atol=1e-5, rtol=1e-5)
    back = load_encoder_checkpoint(p)
    assert back.pos_embed_type == "rope"
    torch.testing.assert_close(back(x), m(x))


def test_rope_context_subsets_padding_and_truncation_use_each_tokens_own_position():
    m = _vit(pos_embed="rope", cls_token=False)
    x = torch.rand(2, 1, 64, 96)
    keep = torch.tensor([[0, 3, 4, 9, 10], [2, 7, 8, 0, 0]])
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = m(x, keep, valid)
    # padded (per_sample) == unpadded == truncated to those 3 (reference): each token rotates by its own index
    torch.testing.assert_close(out[1, :3], m(x[1:], keep[1:, :3])[0], atol=1e-5, rtol=1e-5)
    # tokens carry their positions: permuting the kept indices permutes the outputs, nothing else
    perm = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(m(x[:1], keep[:1, perm])[0], out[0, perm], atol=1e-5, rtol=1e-5)
    # and the position matters: the same patches at other grid positions give other tokens
    assert not torch.allclose(m(x[:1], keep[:1])[0, 0], m(x[:1], keep[:1] + 1)[0, 0], atol=1e-3)


def test_rope_predictor_padding_and_decoder():
    torch.manual_seed(0)
    p = Predictor(in_dim=192, out_dim=64, embed_dim=32, depth=2, num_heads=2, per_block=False, pos_embed="rope",
                  zero_init_mask_tokens=True).eval()
    assert not p.mask_tokens.any()
    ctx = torch.randn(2, 5, 192)
    cidx = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 0, 0]])
    cval = torch.tensor([[True] * 5, [True, True, True, False, False]])
    tidx = torch.tensor([[[10, 11]], [[14, 15]]])
    out = p(ctx, cidx, tidx, (4, 6), cval)
    torch.testing.assert_close(out[1], p(ctx[1:, :3], cidx[1:, :3], tidx[1:], (4, 6))[0], atol=1e-5, rtol=1e-5)
    # mask tokens differ only by their RoPE positions: moving a target moves its prediction
    assert not torch.allclose(out[0], p(ctx[:1], cidx[:1], tidx[:1] + 2, (4, 6))[0], atol=1e-4)
    d = MAEDecoder(192, 16, 1, embed_dim=32, depth=1, num_heads=2, pos_embed="rope").eval()
    keep = torch.tensor([[1, 4, 0]])
    a = d(torch.randn(1, 3, 192), keep, (4, 6), torch.tensor([[True, True, False]]), cls=torch.randn(1, 192))
    assert a.shape == (1, 24, 256)
    with pytest.raises(ValueError, match="divisible by 4"):
        Predictor(in_dim=192, out_dim=64, embed_dim=36, depth=1, num_heads=6, pos_embed="rope")


# ----------------------------------------------------------------------------- variable-length batches


def _salt_parts(backend, per_block, pos_embed, grid=(6, 6), seed=0):
    """A tiny SALT student + predictor (identical weights for every backend) and a stand-in target cache."""
    from usjepa.objectives import SALT

    torch.manual_seed(seed)
    student = build_vit("vit_tiny", depth=2, img_size=(grid[0] * 8, grid[1] * 8), patch_size=8, in_chans=1,
                        cls_token=pos_embed == "sincos", pos_embed=pos_embed, attn_backend=backend, drop_path=0.0)
    predictor = Predictor(192, 48, embed_dim=64, depth=2, num_heads=4, per_block=per_block, attn_backend=backend,
                          pos_embed=pos_embed, num_mask_tokens=2)
    targets = torch.randn(4, grid[0] * grid[1], 48, generator=torch.Generator().manual_seed(seed + 1))

    class Cache:
        def get(self, index):
            return targets[:len(index)].to(index.device)

    return SALT(student, predictor, None, cache=Cache())


def _mask_batches(kind, grid=(6, 6), B=4):
    from usjepa.masks import ComplementMasker, MultiBlockMasker, PerSampleSampler, VJepaMultiBlock

    if kind == "per_sample_blocks":  # I-JEPA-like blocks drawn per image: padded context and targets
        sampler = PerSampleSampler(MultiBlockMasker(grid, target_scale=(0.1, 0.3), num_targets=3, min_keep=2))
    elif kind == "per_sample_complement":
        sampler = PerSampleSampler(ComplementMasker(grid))
    else:  # the SALT recipe's reference sampler: truncated to the batch minimum, nothing padded
        sampler = VJepaMultiBlock(grid)
    return sampler(list(range(100, 100 + B)))


@pytest.mark.parametrize("per_block,pos_embed,masks", [(True, "sincos", "per_sample_blocks"),
                                                       (False, "rope", "per_sample_complement")])
def test_backends_agree_on_padded_batches_forward_and_backward(monkeypatch, per_block, pos_embed, masks):
    """math, SDPA and the xformers packing (on a CPU reference of its kernel) give the same SALT loss and the same
    gradients on per-sample masks, whose contexts and target blocks are padded to different lengths."""
    from tests import xformers_reference as xref

    xref.install(monkeypatch)
    mbs = _mask_batches(masks)
    assert any(m.context_lengths is not None for m in mbs) and any(m.targets_lengths is not None for m in mbs)
    batch = {"image": torch.rand(4, 1, 48, 48, generator=torch.Generator().manual_seed(3)), "masks": mbs,
             "index": torch.arange(4)}
    results = {}
    for backend in ("math", "sdpa", "xformers"):
        obj = _salt_parts(backend, per_block, pos_embed)
        loss, _ = obj(batch)
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in obj.named_parameters()})
    assert xref.calls and all(c is not None for c in xref.calls)  # every xformers call ran packed
    loss_ref, grads_ref = results["math"]
    for backend in ("sdpa", "xformers"):
        loss, grads = results[backend]
        torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
        for name, g in grads.items():
            torch.testing.assert_close(g, grads_ref[name], atol=1e-5, rtol=1e-4, msg=f"{backend}: {name}")


@pytest.mark.parametrize("backend,masks", [("sdpa", "per_sample_blocks"), ("xformers", "per_sample_blocks"),
                                           ("xformers", "reference"), ("math", "per_sample_complement")])
def test_salt_forward_backward_never_reads_the_device(monkeypatch, backend, masks):
    """The whole student + predictor + loss forward and backward on the meta device, where nothing can be read
    back, under a mode that fails on any data-dependent op: the layouts come from the collator's host lengths.
    Reference masks are never padded, so the dense kernel runs (no bias at all)."""
    from tests import xformers_reference as xref
    from tests.host_sync import no_host_sync

    xref.install(monkeypatch)
    per_block = masks == "per_sample_blocks"
    obj = _salt_parts(backend, per_block, "rope" if not per_block else "sincos").to("meta")
    batch = {"image": torch.rand(4, 1, 48, 48, device="meta"), "index": torch.arange(4, device="meta"),
             "masks": [m.to("meta") for m in _mask_batches(masks)]}
    with no_host_sync():
        loss, _ = obj(batch)
        loss.backward()
    assert loss.device.type == "meta"
    if backend == "xformers":
        padded = [c for c in xref.calls if c is not None]
        assert (not padded) if masks == "reference" else padded
