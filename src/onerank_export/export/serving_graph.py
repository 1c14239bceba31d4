"""The request-structured serving graph: the same function as the dense reference, linear in N.

The user context never attends to candidates, so its states are identical for every
candidate: compute them once per request (causal U x U). Each candidate group's K+1 queries
then attend to [user keys ; own group keys]: one matmul against the shared user keys
(no N-fold copy), one small batched matmul inside each group, and one softmax over the
concatenated scores (computed in two parts; see ServingEncoderLayer). Cost O(N (K+1) (U + K+1) d)
instead of O((U + N(K+1))^2 d).

The module holds the reference model as a submodule and reads its parameters: no copies.
When exported, the scorer becomes the `onerank::MatchingScore` custom node.
"""

from __future__ import annotations

import torch
from torch import nn

from onerank_export.export.custom_op import MATCHING_SCORE, node_attributes
from onerank_export.model.layers import EncoderLayer
from onerank_export.model.onerank import OneRankModel
from onerank_export.model.scorer import matching_score


class ServingGraph(nn.Module):
    def __init__(self, model: OneRankModel) -> None:
        super().__init__()
        self.model = model
        # Per-layer wrappers only give the exported nodes readable scopes ("encoder.0/softmax");
        # they hold the model's own layers, so parameters are shared, not copied.
        self.encoder = nn.ModuleList(ServingEncoderLayer(layer) for layer in model.layers)
        self.register_buffer("group_bias", _bias(model.group_pattern(model.cfg.num_tasks)), persistent=False)

    def forward(self, hist_item_ids: torch.Tensor, hist_action_ids: torch.Tensor, context_ids: torch.Tensor,
                cand_item_ids: torch.Tensor, cand_features: torch.Tensor) -> torch.Tensor:
        m = self.model
        x_u, valid_u = m.embed_user(hist_item_ids, hist_action_ids)
        x_g = m.embed_groups(cand_item_ids, cand_features)
        r = self.encode(x_u, valid_u, x_g)
        cand_valid = cand_item_ids != 0
        _, z = m.task_heads(r, context_ids, cand_valid)
        return self.score(z, r, cand_valid)

    def encode(self, x_u: torch.Tensor, valid_u: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
        """x_u [B, U, d], valid_u [B, U], x_g [B, N, K+1, d] -> r [B, N, K, d]."""
        b, n, g, d = x_g.shape
        u = x_u.shape[1]
        # Additive masks, built once per request and reused by every layer.
        key_bias = _bias(valid_u)[:, None, None, :]  # [B, 1, 1, U]: padded history is invisible
        pos = torch.arange(u, device=x_u.device)
        causal = pos[None, :] <= pos[:, None]
        # A query always sees itself, so a padded history row stays finite (its output is unused).
        user_bias = torch.maximum(_bias(causal) + key_bias, _bias(pos[None, :] == pos[:, None]))  # [B,1,U,U]
        x_g = x_g.reshape(b, n * g, d)
        for layer in self.encoder:
            x_u, x_g = layer(x_u, x_g, user_bias, key_bias, self.group_bias, n, g)
        r = self.model.norm_enc(x_g).view(b, n, g, d)
        return r[:, :, 1:]

    def score(self, z: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scale = self.model.cfg.scale
        if torch.onnx.is_in_onnx_export():
            b, n, k, _ = r.shape
            return torch.onnx.ops.symbolic(
                f"{MATCHING_SCORE.domain}::{MATCHING_SCORE.op_type}",
                (z, r, valid),
                node_attributes(scale),
                dtype=torch.float32,
                shape=(b, n, k),
                version=MATCHING_SCORE.version,
            )
        return matching_score(z, r, valid, scale)


class ServingEncoderLayer(nn.Module):
    """One encoder layer applied per request: user context once, candidate groups against it."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__()
        # Not registered as a submodule: the parameters keep their checkpoint names (layers.i.*).
        self.__dict__["layer"] = layer

    def forward(self, x_u: torch.Tensor, x_g: torch.Tensor, user_bias: torch.Tensor, key_bias: torch.Tensor,
                group_bias: torch.Tensor, n: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_u [B, U, d], x_g [B, N(K+1), d] -> both after one encoder layer."""
        layer = self.layer
        b, u, d = x_u.shape
        h = layer.n_heads
        dh = d // h
        scale = dh**-0.5
        q_u, k_u, v_u = _heads(layer, x_u, h)  # [B, H, U, dh]
        q_g, k_g, v_g = _heads(layer, x_g, h)  # [B, H, N(K+1), dh]

        # User context: causal self-attention, computed once per request.
        p_u = torch.softmax(q_u @ k_u.transpose(-1, -2) * scale + user_bias, dim=-1)
        o_u = p_u @ v_u

        # Candidate groups: scores against the shared user keys and against their own group,
        # normalised together as one softmax over [user keys ; group keys]. The two parts share
        # one running max and one denominator instead of being concatenated: concatenating and
        # splitting the [N(K+1), U] score matrix cost more than the attention itself on CPU.
        s_gu = q_g @ k_u.transpose(-1, -2) * scale + key_bias  # [B, H, N(K+1), U]
        q5, k5, v5 = (t.view(b, h, n, g, dh) for t in (q_g, k_g, v_g))
        s_gg = q5 @ k5.transpose(-1, -2) * scale + group_bias  # [B, H, N, K+1, K+1]
        peak = torch.maximum(s_gu.amax(-1, keepdim=True), s_gg.amax(-1, keepdim=True).view(b, h, n * g, 1))
        e_gu = torch.exp(s_gu - peak)
        e_gg = torch.exp(s_gg - peak.view(b, h, n, g, 1))
        denom = e_gu.sum(-1, keepdim=True) + e_gg.sum(-1, keepdim=True).view(b, h, n * g, 1)
        o_g = (e_gu @ v_u + (e_gg @ v5).view(b, h, n * g, dh)) / denom

        x_u = x_u + layer.out(o_u.transpose(1, 2).reshape(b, u, d))
        x_g = x_g + layer.out(o_g.transpose(1, 2).reshape(b, n * g, d))
        x_u = x_u + layer.ffn(layer.norm_ffn(x_u))
        x_g = x_g + layer.ffn(layer.norm_ffn(x_g))
        return x_u, x_g


def _heads(layer: EncoderLayer, x: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, ...]:
    """x [B, T, d] -> q, k, v [B, H, T, dh] with the layer's own norm and projection."""
    b, t, d = x.shape
    qkv = layer.qkv(layer.norm_attn(x)).view(b, t, 3, n_heads, d // n_heads)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _bias(visible: torch.Tensor) -> torch.Tensor:
    """Boolean visibility -> additive bias (0 visible, -inf hidden)."""
    zero = torch.zeros((), dtype=torch.float32, device=visible.device)
    return torch.where(visible, zero, torch.full_like(zero, float("-inf")))
