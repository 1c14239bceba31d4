"""OneRank reference model (PyTorch eager): the ground truth every other stage is compared with.

Token layout per request (DESIGN.md):

    [ h_1 .. h_L | a_1 .. a_A | c_1 t_1^1 .. t_K^1 | ... | c_N t_1^N .. t_K^N ]
      history      anchors      one group per candidate

Encoder mask (True = may attend), applied densely over all L + A + N(K+1) tokens:
  user context (history + anchors): causal among itself, padded history keys invisible;
  candidate token c_i: user context + itself;
  task token t_k^i: user context + c_i + itself (task tokens blind to each other);
  no group sees another group; the user context sees no candidate.
Every query sees at least itself, so a padded or empty row never produces NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from onerank_export.config import OneRankConfig
from onerank_export.model.layers import EncoderLayer, TaskCrossAttention, TaskInteraction
from onerank_export.model.scorer import matching_logits, matching_score


@dataclass
class OneRankOutputs:
    scores: torch.Tensor  # [B, N, K] probabilities, 0 for padded candidates
    logits: torch.Tensor  # [B, N, K] scale * <z_k, r_k^i>
    r: torch.Tensor  # [B, N, K, d] final encoder state of each task token
    h: torch.Tensor  # [B, K, d] candidate-aware context per task
    z: torch.Tensor  # [B, K, d] after cross-task interaction


class OneRankModel(nn.Module):
    def __init__(self, cfg: OneRankConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.item_vocab_size, d, padding_idx=0)
        self.action_emb = nn.Embedding(cfg.action_vocab_size, d, padding_idx=0)
        self.recency_emb = nn.Embedding(cfg.max_hist_len, d)
        self.anchors = nn.Parameter(torch.randn(cfg.num_anchor_tokens, d) * 0.02)
        self.context_emb = nn.Embedding(cfg.context_vocab_size, d, padding_idx=0)
        self.context_proj = nn.Linear(cfg.num_context_fields * d, d)
        self.context_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.cand_features = nn.Linear(cfg.num_cand_features, d)
        self.task_tokens = nn.Parameter(torch.randn(cfg.num_tasks, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm_enc = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.contextualize = TaskCrossAttention(cfg)
        self.interaction = TaskInteraction(cfg)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.action_emb.weight, std=0.02)
        nn.init.normal_(self.recency_emb.weight, std=0.02)
        nn.init.normal_(self.context_emb.weight, std=0.02)
        for emb in (self.item_emb, self.action_emb, self.context_emb):
            emb.weight.data[0].zero_()

    # ----- token embeddings (shared by the dense encoder and the serving graph) ---------------
    def embed_user(self, hist_item_ids: torch.Tensor, hist_action_ids: torch.Tensor,
                   hist_item_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> user-context tokens [B, L + A, d] and their validity [B, L + A].

        `hist_item_rows` [B, L, d]: the item rows looked up outside the graph (split mode: the
        embedding store); None reads them from `item_emb`. The ids still give the mask."""
        valid_h = hist_item_ids != 0
        # Position by recency (most recent real item = 0), so where the padding sits is irrelevant.
        recency = (valid_h.flip(-1).cumsum(-1).flip(-1) - 1).clamp(0, self.cfg.max_hist_len - 1)
        rows = self.item_emb(hist_item_ids) if hist_item_rows is None else hist_item_rows
        x_h = rows + self.action_emb(hist_action_ids) + self.recency_emb(recency)
        b = hist_item_ids.shape[0]
        x_a = self.anchors.unsqueeze(0).expand(b, -1, -1)
        valid_a = torch.ones(b, self.cfg.num_anchor_tokens, dtype=torch.bool, device=valid_h.device)
        return torch.cat([x_h, x_a], dim=1), torch.cat([valid_h, valid_a], dim=1)

    def embed_groups(self, cand_item_ids: torch.Tensor, cand_features: torch.Tensor,
                     cand_item_rows: torch.Tensor | None = None) -> torch.Tensor:
        """-> candidate groups [B, N, K + 1, d]: c_i followed by t_k^i = c_i + task template k.

        `cand_item_rows` [B, N, d]: looked-up rows (split mode), as in `embed_user`."""
        rows = self.item_emb(cand_item_ids) if cand_item_rows is None else cand_item_rows
        c = rows + self.cand_features(cand_features)  # [B, N, d]
        # One broadcast add with a zero template for c itself (c + 0 is exactly c), not an add and a concat.
        return c.unsqueeze(2) + F.pad(self.task_tokens, (0, 0, 1, 0))  # [B, N, K + 1, d]

    def situation(self, context_ids: torch.Tensor) -> torch.Tensor:
        """Situational descriptor s [B, d] from the context buckets (field order matters)."""
        e = self.context_emb(context_ids)  # [B, C, d]
        return self.context_norm(self.context_proj(e.flatten(1)))

    # ----- dense encoder ----------------------------------------------------------------------
    @staticmethod
    def group_pattern(num_tasks: int, device: torch.device | None = None) -> torch.Tensor:
        """[K+1, K+1] visibility inside one group: c->c, t_k->c, t_k->t_k."""
        g = torch.eye(num_tasks + 1, dtype=torch.bool, device=device)
        g[:, 0] = True
        return g

    def dense_mask(self, valid_u: torch.Tensor, num_candidates: int) -> torch.Tensor:
        """[B, T, T] boolean encoder mask over T = U + N(K+1) tokens."""
        b, u = valid_u.shape
        g = self.cfg.num_tasks + 1
        t = u + num_candidates * g
        dev = valid_u.device
        mask = torch.zeros(b, t, t, dtype=torch.bool, device=dev)
        causal = torch.ones(u, u, dtype=torch.bool, device=dev).tril()
        eye_u = torch.eye(u, dtype=torch.bool, device=dev)
        mask[:, :u, :u] = (causal & valid_u[:, None, :]) | eye_u
        mask[:, u:, :u] = valid_u[:, None, :]
        groups = torch.kron(torch.eye(num_candidates, dtype=torch.int8, device=dev),
                            self.group_pattern(self.cfg.num_tasks, dev).to(torch.int8)).bool()
        mask[:, u:, u:] = groups
        return mask

    def encode_dense(self, x_u: torch.Tensor, valid_u: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
        """One masked attention over every token; returns r [B, N, K, d]."""
        b, n, g, d = x_g.shape
        x = torch.cat([x_u, x_g.reshape(b, n * g, d)], dim=1)
        mask = self.dense_mask(valid_u, n)
        for layer in self.layers:
            x = layer.forward_dense(x, mask)
        x = self.norm_enc(x[:, x_u.shape[1]:]).view(b, n, g, d)
        return x[:, :, 1:]

    # ----- task heads (shared) ---------------------------------------------------------------
    def task_heads(self, r: torch.Tensor, context_ids: torch.Tensor, cand_valid: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """r [B, N, K, d] -> (h, z), each [B, K, d]."""
        h = self.contextualize(self.situation(context_ids), r, cand_valid)
        return h, self.interaction(h)

    def forward(self, hist_item_ids: torch.Tensor, hist_action_ids: torch.Tensor, context_ids: torch.Tensor,
                cand_item_ids: torch.Tensor, cand_features: torch.Tensor) -> OneRankOutputs:
        x_u, valid_u = self.embed_user(hist_item_ids, hist_action_ids)
        x_g = self.embed_groups(cand_item_ids, cand_features)
        r = self.encode_dense(x_u, valid_u, x_g)
        cand_valid = cand_item_ids != 0
        h, z = self.task_heads(r, context_ids, cand_valid)
        return OneRankOutputs(
            scores=matching_score(z, r, cand_valid, self.cfg.scale),
            logits=matching_logits(z, r, self.cfg.scale),
            r=r, h=h, z=z,
        )
