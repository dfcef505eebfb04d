"""Building the encoders a probe run compares: usjepa checkpoints, teacher-zoo specs, timm models (through the
teacher zoo's timm family and FrozenTeacher, as every foreign model), random init.

Every encoder obeys the package's encoder contract (`embed_dim`, `patch_size`, `forward(images) -> [B, N, D]`
patch tokens from [0, 1] images). Each gets an identity hash of its weights, buffers and spec, which keys
the feature cache: the same weights give the same cached features whatever file they came from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from usjepa.eval.spec import ENCODER_KINDS
from usjepa.spec import plain

log = logging.getLogger(__name__)

@dataclass
class ProbeEncoder:
    """A frozen encoder ready for feature extraction."""

    name: str
    kind: str
    module: nn.Module
    identity: str  # hex digest: weights + buffers + spec
    use_intermediate: bool  # features from get_intermediate_layers (CLS, last-k); False: forward() only

    @property
    def has_cls(self) -> bool:
        return self.use_intermediate and int(getattr(self.module, "num_prefix_tokens", 0) or 0) > 0


def weights_hash(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): the identity of a network's function."""
    h = hashlib.sha256()
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _random_like(module: nn.Module, seed: int) -> nn.Module:
    """The same architecture, freshly initialised from `seed` (the random-init reference floor)."""
    from usjepa.models.vit import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if isinstance(module, VisionTransformer):
            # the encoder's own spec (positions, init scheme) with the default kernel and no stochastic depth
            spec = module.spec.replace(attn_backend="auto", drop_path=0.0)
            return spec.build()
        fresh = copy.deepcopy(module)
        n = 0
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
                n += 1
        if n == 0:
            raise ValueError(f"cannot re-initialise a {type(module).__name__}: none of its modules has "
                             "reset_parameters(); point `like` at a usjepa checkpoint instead")
        return fresh


def _spec_dict(spec) -> dict:
    return dict(plain(spec))


def checkpoint_encoder(name: str, spec, specs, stack: tuple[str, ...], device) -> tuple[nn.Module, bool]:
    """kind=student / mae: the encoder of a usjepa checkpoint or export."""
    from usjepa.io.checkpoints import load_encoder_checkpoint

    return load_encoder_checkpoint(spec.path, which=spec.which), True


def teacher_encoder(name: str, spec, specs, stack: tuple[str, ...], device) -> tuple[nn.Module, bool]:
    """kind=teacher: a teacher-zoo model; last-k / CLS features only when its output is its final block."""
    import teachers

    t = spec.teacher
    return teachers.load_spec(t), (t.layer in (-1, None) and t.mean_last_k == 1)


def timm_encoder(name: str, spec, specs, stack: tuple[str, ...], device) -> tuple[nn.Module, bool]:
    """kind=timm: a foreign model goes through the teacher zoo's loader and wrapper, as teachers do."""
    from teachers.timm_family import frozen_timm

    opts = dict(_spec_dict(spec.timm_options)) if spec.timm_options else {}
    # the precision feature extraction autocasts to (bf16 on CUDA, else fp32), so the wrapper never overrides it
    precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    return frozen_timm(spec.timm_model, spec.path or "", opts, precision=precision), True


def random_encoder(name: str, spec, specs, stack: tuple[str, ...], device) -> tuple[nn.Module, bool]:
    """kind=random: a fresh initialisation of another encoder of this config (or of a checkpoint's)."""
    like = spec.like
    if like in specs:
        if like in stack:
            raise ValueError(f"encoders.{name}.like forms a cycle: {' -> '.join(stack + (like,))}")
        base, inter = _build_module(like, specs[like], specs, stack + (like,), device)
    elif Path(like).exists():
        from usjepa.io.checkpoints import load_encoder_checkpoint

        base, inter = load_encoder_checkpoint(like), True
    else:
        raise ValueError(f"encoders.{name}.like='{like}' is neither an encoder of this config "
                         f"({', '.join(specs)}) nor an existing checkpoint file")
    return _random_like(base, spec.seed), inter


def _build_module(name: str, spec, specs, stack: tuple[str, ...],
                  device: str | torch.device = "cpu") -> tuple[nn.Module, bool]:
    """(module, whether intermediate layers / CLS are its own) for the encoder kind registered in ENCODER_KINDS."""
    if spec.kind not in ENCODER_KINDS:
        raise ValueError(f"encoders.{name}.kind='{spec.kind}' is not one of {', '.join(ENCODER_KINDS)}")
    return ENCODER_KINDS.get(spec.kind)(name, spec, specs, stack, device)


def build_probe_encoder(name: str, spec, specs: dict | None = None, device: str | torch.device = "cpu") -> ProbeEncoder:
    """Build, freeze and fingerprint the encoder `name` of a probe config (`specs` resolves `like`)."""
    specs = specs if specs is not None else {name: spec}
    module, inter = _build_module(name, spec, specs, (name,), device)
    module = module.eval().requires_grad_(False).to(device)
    for attr in ("embed_dim", "patch_size"):
        if not hasattr(module, attr):
            raise TypeError(f"encoder '{name}' ({type(module).__name__}) lacks `{attr}`; it does not follow the "
                            "encoder contract")
    inter = inter and hasattr(module, "get_intermediate_layers")
    sd = _spec_dict(spec)
    ident = {k: sd.get(k) for k in ("kind", "which", "timm_model")}
    if spec.kind == "teacher":  # layer / pooling options change the output without changing the weights
        ident["teacher"] = {k: v for k, v in sd["teacher"].items() if k not in ("checkpoint", "cache")}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
    h.update(type(module).__name__.encode())
    h.update(weights_hash(module).encode())
    log.info("encoder %s: %s %s, embed_dim %d, patch %d, id %s", name, spec.kind, type(module).__name__,
             module.embed_dim, module.patch_size, h.hexdigest()[:12])
    return ProbeEncoder(name, spec.kind, module, h.hexdigest(), inter)
