"""Building blocks of the OneRank encoder and its task heads.

Parameters live here; how they are applied differs between the dense reference encoder
(`model/onerank.py`, one masked attention over all tokens) and the request-structured
serving graph (`export/serving_graph.py`), which reads the same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onerank_export.config import OneRankConfig


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, cfg: OneRankConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm_ffn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., T, d] -> q, k, v each [..., H, T, d/H]."""
        qkv = self.qkv(self.norm_attn(x))
        *lead, t, three_d = qkv.shape
        qkv = qkv.view(*lead, t, 3, self.n_heads, three_d // (3 * self.n_heads))
        q, k, v = qkv.unbind(-3)
        return q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., H, T, dh] -> [..., T, d] through the output projection."""
        x = x.transpose(-3, -2)
        return self.out(x.reshape(*x.shape[:-2], -1))

    def forward_dense(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, d]; mask [B, T, T] bool, True = may attend. Fused SDPA with the boolean mask."""
        q, k, v = self.split_heads(x)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
        x = x + self.merge_heads(attn)
        return x + self.ffn(self.norm_ffn(x))


class TaskCrossAttention(nn.Module):
    """Candidate-aware contextualisation: a per-task query from the situational descriptor
    cross-attends over the request's real candidates' task states r_k^i."""

    def __init__(self, cfg: OneRankConfig) -> None:
        super().__init__()
        d, k = cfg.d_model, cfg.num_tasks
        self.n_heads = cfg.n_heads
        self.task_query = nn.Parameter(torch.randn(k, d, d) * d**-0.5)  # task-private projection of s
        self.task_bias = nn.Parameter(torch.zeros(k, d))
        self.norm_q = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.norm_kv = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, s: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """s [B, d], r [B, N, K, d], valid [B, N] -> h [B, K, d]."""
        b, n, k, d = r.shape
        h, hd = self.n_heads, d // self.n_heads
        # Plain matmuls (no einsum): TensorRT's Einsum support is restricted and ORT runs MatMul faster.
        s_k = (s @ self.task_query.transpose(0, 1).reshape(d, k * d)).view(b, k, d) + self.task_bias
        q = self.q(self.norm_q(s_k)).view(b, k, h, 1, hd)  # [B, K, H, 1, hd]
        kv = self.kv(self.norm_kv(r)).view(b, n, k, 2, h, hd).permute(3, 0, 2, 4, 1, 5)  # [2, B, K, H, N, hd]
        key, val = kv.unbind(0)
        logits = (q @ key.transpose(-1, -2)) * hd**-0.5  # [B, K, H, 1, N]
        weights = masked_softmax(logits, valid[:, None, None, None, :])
        ctx = (weights @ val).reshape(b, k, d)
        return s_k + self.out(ctx)


class TaskInteraction(nn.Module):
    """Controlled cross-task interaction over {h_1..h_K} with a visibility mask and
    cross-task gradient detachment, then FFN; returns z [B, K, d]."""

    def __init__(self, cfg: OneRankConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.detach_cross_task = cfg.detach_cross_task
        self.register_buffer("visible", torch.tensor(cfg.task_visibility(), dtype=torch.bool), persistent=False)
        self.norm_attn = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm_ffn = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(d, cfg.d_ff)
        self.norm_final = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def _heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, k, d = h.shape
        qkv = self.qkv(self.norm_attn(h)).view(b, k, 3, self.n_heads, d // self.n_heads)
        return qkv.unbind(2)  # each [B, K, H, dh]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, k, d = h.shape
        q, key, val = self._heads(h)
        scale = (d // self.n_heads) ** -0.5
        if self.detach_cross_task and torch.is_grad_enabled():
            # Task k reads h_j (j != k) forward, but its loss must not reach h_j: off-diagonal keys
            # and values come from a detached copy (same values), the diagonal keeps its gradient.
            _, key_det, val_det = self._heads(h.detach())
            diag = torch.eye(k, dtype=torch.bool, device=h.device)[None, :, :, None, None]
            key = torch.where(diag, key[:, None], key_det[:, None])  # [B, Kq, Kkv, H, dh]
            val = torch.where(diag, val[:, None], val_det[:, None])
            weights = masked_softmax(torch.einsum("bqhe,bqjhe->bhqj", q, key) * scale, self.visible)
            ctx = torch.einsum("bhqj,bqjhe->bqhe", weights, val)
        else:  # inference: the same values without the detached copy, as plain matmuls
            q, key, val = (t.transpose(1, 2) for t in (q, key, val))  # [B, H, K, dh]
            weights = masked_softmax((q @ key.transpose(-1, -2)) * scale, self.visible)
            ctx = (weights @ val).transpose(1, 2)  # [B, K, H, dh]
        z = h + self.out(ctx.reshape(b, k, d))
        z = z + self.ffn(self.norm_ffn(z))
        return self.norm_final(z)


def masked_softmax(logits: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to `visible`; a row with nothing visible gives zeros
    (not NaN), e.g. a request whose candidates are all padding."""
    any_visible = visible.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(~visible, float("-inf"))
    logits = torch.where(any_visible, logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim=-1) * any_visible.to(logits.dtype)
