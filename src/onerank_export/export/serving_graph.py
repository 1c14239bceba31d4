"""The request-structured serving graph: the same function as the dense reference, linear in N.

The user context never attends to candidates, so its states are identical for every
candidate: compute them once per request (causal U x U). Each candidate group's K+1 tokens
then attend to [user keys ; own candidate token ; self] (model.group_pattern): one GEMM
against the shared user keys (no N-fold copy), with the two in-group scores - per-row dot
products - and the key mask folded into it as extra key columns, so the one big score matrix
[N(K+1), U] is written by a GEMM, normalised by one fused Softmax and read by one value GEMM
(see ServingEncoderLayer). Cost O(N (K+1) U d) instead of O((U + N(K+1))^2 d). The last layer
computes queries for the task tokens only: nothing reads the candidate tokens' last outputs.

The module holds the reference model as a submodule and reads its parameters: no copies.
When exported, the scorer becomes the `onerank::MatchingScore` custom node.

The user side reads the history only, so the graph splits there (`user_states` /
`score_candidates`): `UserEncoderGraph` and `CandidateScorerGraph` are the two halves exported on
their own for the cross-request user-state cache (user_states.py names the tensors between them);
the single graph is exactly their composition, the same code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onerank_export.export.custom_op import MATCHING_SCORE, node_attributes
from onerank_export.model.layers import EncoderLayer
from onerank_export.model.onerank import OneRankModel
from onerank_export.model.scorer import matching_score

# Additive mask for hidden keys. Finite, because the candidates' key mask is a GEMM operand
# (-inf * 0 inside a GEMM is NaN); any score gap beyond ~104 underflows exp() to exactly 0 in
# fp32, and fp16 holds it exactly. Values at or below MASK_FLOOR are masks, not data.
MASKED_SCORE = -30000.0
MASK_FLOOR = MASKED_SCORE / 2


class ServingGraph(nn.Module):
    def __init__(self, model: OneRankModel) -> None:
        super().__init__()
        self.model = model
        # Per-layer wrappers only give the exported nodes readable scopes ("encoder.0/softmax");
        # they hold the model's own layers, so parameters are shared, not copied.
        self.encoder = nn.ModuleList(ServingEncoderLayer(layer) for layer in model.layers)
        g = model.cfg.num_tasks + 1
        pattern = model.group_pattern(model.cfg.num_tasks)
        if not torch.equal(pattern, torch.eye(g, dtype=torch.bool) | (torch.arange(g) == 0)):
            raise NotImplementedError("the serving graph assumes a group token sees its candidate token and itself")
        # Row 0 is the candidate token, whose "self" key is the candidate key: that one key is
        # entered as two halves (log 1/2 on both scores) instead of masking one copy, because a
        # masked exp() costs a denormal microcode assist per element on x86 and this is exact.
        half_bias = torch.zeros(g, 1, 1)  # broadcasts over [B, N, K+1, H, 1]
        half_bias[0] = -math.log(2.0)
        self.register_buffer("half_bias", half_bias, persistent=False)

    def forward(self, hist_item_ids: torch.Tensor, hist_action_ids: torch.Tensor, context_ids: torch.Tensor,
                cand_item_ids: torch.Tensor, cand_features: torch.Tensor) -> torch.Tensor:
        states = self.user_states(hist_item_ids, hist_action_ids)
        return self.score_candidates(states, context_ids, cand_item_ids, cand_features)

    def user_states(self, hist_item_ids: torch.Tensor, hist_action_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The user side, which reads the history only: (key_mask [B, 1, U, 1], then each layer's
        keys and values [B, H, U, dh]) in `user_states.state_specs` order."""
        m = self.model
        x_u, valid_u = m.embed_user(hist_item_ids, hist_action_ids)
        u = x_u.shape[1]
        # Additive masks, built once per request and reused by every layer.
        pos = torch.arange(u, device=x_u.device)
        # Causal over real history, in one comparison: a padded history key is placed after every
        # query. A padded query row sees only the real keys before it, or none; with the finite
        # mask its softmax stays finite either way, and nothing reads that row (it is a masked key
        # to every other query). Cast and Mul, not Where: ORT's broadcasting Where is slow.
        key_pos = torch.where(valid_u, pos, u)  # [B, U]
        user_bias = (key_pos[:, None, None, :] > pos[:, None]).to(x_u.dtype) * MASKED_SCORE  # [B, 1, U, U]
        # The candidates' key mask is a GEMM operand (see ServingEncoderLayer): finite MASKED_SCORE.
        states = [torch.where(valid_u, 0.0, MASKED_SCORE)[:, None, :, None]]  # [B, 1, U, 1]
        for i, layer in enumerate(self.encoder):
            x_u, k_u, v_u = layer.user_step(x_u, user_bias, last=i == len(self.encoder) - 1)
            states += [k_u, v_u]
        return tuple(states)

    def score_candidates(self, states: tuple[torch.Tensor, ...], context_ids: torch.Tensor,
                         cand_item_ids: torch.Tensor, cand_features: torch.Tensor) -> torch.Tensor:
        """The candidate side: scores [B, N, K] from the user states and the rest of the request."""
        m = self.model
        r = self.encode_groups(states, m.embed_groups(cand_item_ids, cand_features))
        cand_valid = cand_item_ids != 0
        _, z = m.task_heads(r, context_ids, cand_valid)
        return self.score(z, r, cand_valid)

    def encode_groups(self, states: tuple[torch.Tensor, ...], x_g: torch.Tensor) -> torch.Tensor:
        """x_g [B, N, K+1, d] against the user states -> r [B, N, K, d]."""
        b, n, g, d = x_g.shape
        key_mask, kv = states[0], states[1:]
        x_g = x_g.reshape(b, n * g, d)
        for i, layer in enumerate(self.encoder):
            last = i == len(self.encoder) - 1
            x_g = layer.group_step(x_g, kv[2 * i], kv[2 * i + 1], key_mask, self.half_bias, n, g,
                                   task_rows_only=last)
        return self.model.norm_enc(x_g).view(b, n, g - 1, d)

    def score(self, z: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scale = self.model.cfg.scale
        if torch.onnx.is_in_onnx_export():
            b, n, k, _ = r.shape
            # The op's mask is int32 (TensorRT plugins take no BOOL input: export/custom_op.py).
            return torch.onnx.ops.symbolic(
                f"{MATCHING_SCORE.domain}::{MATCHING_SCORE.op_type}",
                (z, r, valid.to(torch.int32)),
                node_attributes(scale),
                dtype=torch.float32,
                shape=(b, n, k),
                version=MATCHING_SCORE.version,
            )
        return matching_score(z, r, valid, scale)


class UserEncoderGraph(nn.Module):
    """The serving graph's user side on its own: history -> user states (the cache's values)."""

    def __init__(self, serving: ServingGraph) -> None:
        super().__init__()
        # The serving graph's own modules under the same names, so node scopes match the single graph's.
        self.model, self.encoder = serving.model, serving.encoder
        self.__dict__["serving"] = serving

    def forward(self, hist_item_ids: torch.Tensor, hist_action_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.serving.user_states(hist_item_ids, hist_action_ids)


class CandidateScorerGraph(nn.Module):
    """The serving graph's candidate side on its own: user states + context + candidates -> scores.

    Inputs in `user_states.scorer_input_names` order: the states, then context_ids, cand_item_ids,
    cand_features."""

    def __init__(self, serving: ServingGraph) -> None:
        super().__init__()
        self.model, self.encoder = serving.model, serving.encoder
        self.__dict__["serving"] = serving
        self.num_states = 1 + 2 * len(serving.encoder)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        states, (context_ids, cand_item_ids, cand_features) = inputs[:self.num_states], inputs[self.num_states:]
        return self.serving.score_candidates(tuple(states), context_ids, cand_item_ids, cand_features)


class ServingEncoderLayer(nn.Module):
    """One encoder layer applied per request: user context once, candidate groups against it."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__()
        # Not registered as a submodule: the parameters keep their checkpoint names (layers.i.*).
        self.__dict__["layer"] = layer
        # The two extra key rows that pick s_cand and s_self out of the extended query (and scale them).
        dh = layer.qkv.in_features // layer.n_heads
        pick = torch.eye(dh + 3)[-2:] * dh**-0.5
        self.register_buffer("pick_keys", pick.view(1, 1, 2, dh + 3), persistent=False)

    def user_step(self, x_u: torch.Tensor, user_bias: torch.Tensor, *, last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_u [B, U, d] -> (x_u after this layer, keys, values [B, H, U, dh]).

        The user context: causal self-attention, computed once per request. After the last layer
        only its keys and values are read (by the candidates), so `last` skips the rest.
        """
        layer = self.layer
        b, u, d = x_u.shape
        h = layer.n_heads
        q_u, k_u, v_u = _heads(layer, x_u, h).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, U, dh]
        if last:
            return x_u, k_u, v_u
        p_u = torch.softmax(q_u @ k_u.transpose(-1, -2) * (d // h) ** -0.5 + user_bias, dim=-1)
        o_u = p_u @ v_u
        x_u = x_u + layer.out(o_u.transpose(1, 2).reshape(b, u, d))
        return x_u + layer.ffn(layer.norm_ffn(x_u)), k_u, v_u

    def group_step(self, x_g: torch.Tensor, k_u: torch.Tensor, v_u: torch.Tensor, key_mask: torch.Tensor,
                   half_bias: torch.Tensor, n: int, g: int, task_rows_only: bool = False) -> torch.Tensor:
        """x_g [B, N(K+1), d] against this layer's user keys/values [B, H, U, dh] -> x_g after the layer.

        task_rows_only (the last layer): the candidate tokens' own outputs feed nothing after the
        last layer, only their keys and values do, so queries are the K task rows of each group
        and x_g comes back as [B, N K, d].
        """
        layer = self.layer
        b, _, d = x_g.shape
        u = k_u.shape[2]
        h = layer.n_heads
        dh = d // h
        scale = dh**-0.5
        # The candidates' q, k, v stay token-major [B, N, K+1, H, dh]: k and v are only used in
        # per-row dot products, and only q goes through the per-head GEMM (one transpose, not three).
        q5, k5, v5 = (t.view(b, n, g, h, dh) for t in _heads(layer, x_g, h).unbind(2))
        x_res, k_self, v_self = x_g, k5, v5
        if task_rows_only:
            q5, k_self, v_self, half_bias = q5[:, :, 1:], k5[:, :, 1:], v5[:, :, 1:], half_bias[1:]
            x_res = x_g.view(b, n, g, d)[:, :, 1:].reshape(b, -1, d)
        rows = q5.shape[1] * q5.shape[2]

        # Candidate groups: one softmax over [user keys ; candidate token ; self]. A group token
        # sees its own candidate token and itself (model.group_pattern), so those two scores are
        # per-row dot products; they enter the user-key GEMM as two extra keys, so the big
        # [rows, U] score matrix is written once by the GEMM, normalised once by a fused
        # Softmax and read once by the value GEMM:
        #   [q, 1, s_cand, s_self] @ [[k_u*scale, mask, 0, 0], [0, 0, scale, 0], [0, 0, 0, scale]]^T.
        # Unscaled dot products: the pick keys carry the scale, so the GEMM applies it for free.
        row_bias = half_bias / scale
        s_cand = ((q5 * k5[:, :, :1]).sum(-1, keepdim=True) + row_bias).view(b, rows, h, 1)
        s_self = ((q5 * k_self).sum(-1, keepdim=True) + row_bias).view(b, rows, h, 1)
        q_ext = torch.cat([q5.reshape(b, rows, h, dh), torch.ones_like(s_cand), s_cand, s_self], dim=-1)
        k_ext = torch.cat([k_u * scale, key_mask.expand(b, h, u, 1), torch.zeros_like(k_u[..., :2])], dim=-1)
        k_ext = torch.cat([k_ext, self.pick_keys.to(k_ext.dtype).expand(b, h, 2, dh + 3)], dim=-2)
        p = torch.softmax(q_ext.transpose(1, 2) @ k_ext.transpose(-1, -2), dim=-1)  # [B, H, rows, U + 2]
        v_ext = torch.cat([v_u, torch.zeros_like(v_u[:, :, :2])], dim=-2)
        p_cand, p_self = p[..., u:].transpose(1, 2).reshape(b, n, -1, h, 2).split(1, dim=-1)
        o_g = (p @ v_ext).transpose(1, 2) + (p_cand * v5[:, :, :1] + p_self * v_self).reshape(b, rows, h, dh)

        x_g = x_res + layer.out(o_g.reshape(b, rows, d))
        return x_g + layer.ffn(layer.norm_ffn(x_g))


def _heads(layer: EncoderLayer, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """x [B, T, d] -> qkv [B, T, 3, H, dh] with the layer's own norm and projection."""
    b, t, d = x.shape
    return layer.qkv(layer.norm_attn(x)).view(b, t, 3, n_heads, d // n_heads)

