"""The dynamic matching scorer: the function that becomes the `onerank::MatchingScore` op.

    logit[b, n, k]  = scale * sum_d z[b, k, d] * r[b, n, k, d]      (accumulated in fp32)
    scores[b, n, k] = sigmoid(logit) if valid[b, n] != 0 else 0

The sigmoid and the padding mask are inside the op: a served model returns probabilities
with padded candidates exactly 0, and the CUDA kernel fuses the whole thing into one pass.
Training uses `matching_logits` (the loss needs logits for a stable log-sigmoid).
"""

from __future__ import annotations

import torch


def matching_logits(z: torch.Tensor, r: torch.Tensor, scale: float) -> torch.Tensor:
    """z [B, K, D], r [B, N, K, D] -> logits [B, N, K] in fp32."""
    return torch.einsum("bkd,bnkd->bnk", z.float(), r.float()) * scale


def matching_score(z: torch.Tensor, r: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """Eager reference of onerank::MatchingScore -> scores [B, N, K] fp32.

    valid [B, N] is bool or integer; nonzero = valid (the op takes int32: export/custom_op.py).
    """
    probs = torch.sigmoid(matching_logits(z, r, scale))
    return torch.where(valid.unsqueeze(-1) != 0, probs, torch.zeros_like(probs))
