"""Pixel MAE (stage 1): reconstruct normalised pixels of the masked patches; the encoder becomes a teacher.

With one mask pair (random masking) this is MAE; with the SALT preset's two pairs (8 x 0.15 and 2 x 0.7
multi-block) it is SALT's V-Pixel stage 1: the encoder runs once per pair and the losses are averaged over the
pairs, as V-JEPA averages its losses over mask pairs. The encoder's CLS token (when it has one) goes through the
decoder, as in MAE.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from usjepa.models.mae_decoder import MAEDecoder, patchify
from usjepa.models.vit import to_channels
from usjepa.objectives.base import Objective, Parts, pooled_features


class MAE(Objective):
    name = "mae"

    def __init__(self, encoder: nn.Module, decoder: MAEDecoder, norm_pix_loss: bool = True):
        super().__init__()
        self.student = encoder
        self.decoder = decoder
        self.norm_pix_loss = norm_pix_loss

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.student, "decoder": self.decoder}

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        images = batch["image"]
        grid = self.student.grid(images.shape[-2:])
        target = patchify(to_channels(images, self.student.in_chans).float(), self.student.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        losses, feats = [], []
        for m in batch["masks"]:  # every mask pair: MAE has one, V-Pixel (SALT stage 1) two
            cls, z = self.student.forward_features(images, m.context, m.context_valid, m.context_lengths)  # [B, K, D]
            pred = self.decoder(z, m.context, grid, m.context_valid, cls=cls).float()  # [B, N, p*p*C]
            losses.append(self._masked_mse(pred, target, m))
            feats.append(pooled_features(z.detach(), m.context_valid))
        return torch.stack(losses).mean(), {"features": feats[0]}

    @staticmethod
    def _masked_mse(pred: Tensor, target: Tensor, m) -> Tensor:
        """Mean squared error over each image's masked patches, then over images."""
        per_patch = (pred - target).pow(2).mean(-1)  # [B, N]
        masked = torch.zeros_like(per_patch)
        B, T, Kt = m.targets.shape
        tv = (
            torch.ones(B, T * Kt, device=masked.device)
            if m.targets_valid is None
            else m.targets_valid.reshape(B, -1).float()
        )
        masked.scatter_add_(1, m.targets.reshape(B, -1), tv)  # 1 at masked patches
        masked = masked.clamp_max(1.0)
        return ((per_patch * masked).sum(1) / masked.sum(1).clamp_min(1.0)).mean()


def from_config(cfg, parts: Parts) -> MAE:
    """MAE from a run config: a pixel decoder on the student (no predictor, no teacher)."""
    m = cfg.objective.mae
    student = parts.student
    dec = MAEDecoder(student.embed_dim, student.patch_size, student.in_chans, embed_dim=m.decoder_dim,
                     depth=m.decoder_depth, num_heads=m.decoder_heads, attn_backend=cfg.model.attn_backend,
                     pos_embed=cfg.model.pos_embed, init=cfg.model.init)
    return MAE(student, dec, norm_pix_loss=m.norm_pix_loss)
