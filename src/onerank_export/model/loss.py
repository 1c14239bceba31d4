"""OneRank training loss: list-wise InfoNCE over a request's candidates + point-wise BCE per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onerank_export.config import OneRankConfig


def task_losses(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, cfg: OneRankConfig
                ) -> torch.Tensor:
    """Per-task loss [K] = infonce_weight * InfoNCE_k + bce_weight * BCE_k.

    logits, labels [B, N, K]; valid [B, N]. InfoNCE for (request, task): mean over the positive
    candidates of -log softmax(logit / tau) taken over the request's real candidates; requests
    without a positive for that task do not contribute.
    """
    v = valid.unsqueeze(-1).expand_as(logits)  # [B, N, K]
    vf = v.float()
    # Point-wise BCE over real candidates.
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    bce = (bce * vf).sum(dim=(0, 1)) / vf.sum(dim=(0, 1)).clamp_min(1.0)
    # List-wise InfoNCE.
    scaled = (logits / cfg.temperature).masked_fill(~v, float("-inf"))
    log_p = torch.log_softmax(scaled, dim=1).masked_fill(~v, 0.0)
    pos = labels * vf
    n_pos = pos.sum(dim=1)  # [B, K]
    per_request = -(log_p * pos).sum(dim=1) / n_pos.clamp_min(1.0)
    has_pos = (n_pos > 0).float()
    nce = (per_request * has_pos).sum(dim=0) / has_pos.sum(dim=0).clamp_min(1.0)
    return cfg.infonce_weight * nce + cfg.bce_weight * bce
