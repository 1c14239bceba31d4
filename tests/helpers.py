"""Helpers shared by test modules (importable as `helpers`; tests/ is on pythonpath)."""

from __future__ import annotations

import numpy as np
import torch

from onerank_export.config import OneRankConfig, ServingConfig
from onerank_export.model.onerank import OneRankModel
from onerank_export.parity.runner import Runner, RunnerUnavailable

TINY = OneRankConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, item_vocab_size=300, context_vocab_size=128,
                     num_context_fields=4, num_cand_features=8, max_hist_len=64, max_candidates=64,
                     num_anchor_tokens=2, serving=ServingConfig(max_batch_size=8, opt_hist_len=32, opt_candidates=32))


def make_tiny_model(seed: int = 0, **changes) -> OneRankModel:
    """A small model so property tests run in milliseconds; same code paths as the default config."""
    torch.manual_seed(seed)
    return OneRankModel(TINY.replace(**changes) if changes else TINY).eval()


def request(cfg: OneRankConfig, batch: int, hist_len: int, num_candidates: int, seed: int = 0,
            full: bool = False) -> dict[str, np.ndarray]:
    from onerank_export.spec import random_request

    return random_request(cfg, np.random.default_rng(seed), batch, hist_len, num_candidates, full=full)


class Missing(Runner):
    """A backend that cannot run here: activating it raises RunnerUnavailable with a reason."""

    def activate_impl(self):
        raise RunnerUnavailable("no CUDA device")

    def infer_impl(self, feed):
        raise AssertionError("never called")


# A stand-in for the module Triton's python backend stub provides: just what python_model.py uses.
FAKE_PB_UTILS = '''
class TritonError(Exception):
    INVALID_ARG = 3
    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code

class Tensor:
    def __init__(self, name, array):
        self.name, self._array = name, array
    def as_numpy(self):
        return self._array

class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error

def get_input_tensor_by_name(request, name):
    return Tensor(name, request[name]) if name in request else None
'''
