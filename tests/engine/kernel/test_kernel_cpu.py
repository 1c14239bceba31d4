"""The MatchingScore kernel source, executed by Triton's CPU interpreter, against the op's two references.

References: the eager scorer (model/scorer.py) and the op's ONNX FunctionProto run by ONNX Runtime.
All kernel runs happen in one interpreter subprocess per module (TRITON_INTERPRET must precede the
first `import triton`, which this pytest process may already have done).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from onerank_export.engine.kernel.interpreter import KernelCase, run_interpreted
from onerank_export.engine.kernel.matching_score import LAUNCH_CONFIGS, select_config
from onerank_export.engine.kernel.matching_score import matching_score as kernel_matching_score
from onerank_export.errors import RequestError
from onerank_export.export.custom_op import MATCHING_SCORE, node_attributes, reference_function
from onerank_export.export.onnx_config import OPSET
from onerank_export.model.scorer import matching_score as eager_matching_score

FP32_TOL = 1e-5
FP16_TOL = 2e-3  # fp16 inputs against the fp32 computation on the unrounded inputs
SCALE = 64**-0.5

# (name, B, N, K, D): D below, above and not a multiple of BLOCK_D (64) or of the 16-element alignment,
# N = 1, N = 2048, row counts that leave partial blocks, K = 1.
SHAPES = [
    ("n1", 1, 1, 3, 64),
    ("batch", 2, 7, 3, 64),
    ("d50", 3, 5, 2, 50),
    ("d130", 2, 9, 3, 130),
    ("k1_tail", 2, 33, 1, 16),
    ("large_n", 1, 2048, 3, 64),
    ("masked_rows", 4, 6, 3, 64),
    ("mask_codes", 3, 12, 3, 64),
]
# The mask is int32 and any nonzero value is a real candidate (export/custom_op.py). Codes whose low byte is 0
# (256, 65536, INT32_MIN) catch a kernel that reads the mask as bytes; 2, -1, 7 one that tests == 1.
MASK_CODES = np.array([0, 1, 2, -1, 7, 256, 65536, np.iinfo(np.int32).min, np.iinfo(np.int32).max], dtype=np.int32)
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def make_inputs(name: str, b: int, n: int, k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((b, k, d)).astype(np.float32)
    r = rng.standard_normal((b, n, k, d)).astype(np.float32)
    valid = (rng.random((b, n)) > 0.3).astype(np.int32)
    if name == "mask_codes":
        valid = rng.choice(MASK_CODES, size=(b, n)).astype(np.int32)
        valid[0, : len(MASK_CODES)] = MASK_CODES  # every code at least once
    if name == "masked_rows":
        valid[1] = False  # a request whose candidates are all padding
        valid[2] = True
        r[1] = 1e4  # padded rows hold garbage; it must never reach a score
    return z, r, valid


def reference(z: np.ndarray, r: np.ndarray, valid: np.ndarray, scale: float) -> np.ndarray:
    """The eager scorer, given the contract's boolean (valid != 0), not the int32 codes the kernel reads."""
    is_valid = torch.from_numpy(valid != 0)
    return eager_matching_score(torch.from_numpy(z), torch.from_numpy(r), is_valid, scale).numpy()


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.isfinite(a).all()
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))


def build_cases() -> dict[tuple, tuple[KernelCase, np.ndarray, np.ndarray]]:
    """key -> (case, fp32 inputs' reference, rounded inputs' reference)."""
    cases = {}
    for i, (name, b, n, k, d) in enumerate(SHAPES):
        z, r, valid = make_inputs(name, b, n, k, d, seed=i)
        exact = reference(z, r, valid, SCALE)
        for dtype, np_dtype in DTYPES.items():
            zq, rq = z.astype(np_dtype), r.astype(np_dtype)
            rounded = reference(zq, rq, valid, SCALE)
            configs = [None] + [c.name for c in LAUNCH_CONFIGS if not c.aligned or d % 16 == 0]
            for config in configs:
                if name == "large_n" and config is not None:
                    continue  # the automatic choice covers large N; keep the interpreter run short
                cases[(name, dtype, config)] = (KernelCase(zq, rq, valid, SCALE, config), exact, rounded)
    # Perturbations that the assertions must catch (see test_the_comparison_detects_*).
    name, b, n, k, d = SHAPES[6]
    z, r, valid = make_inputs(name, b, n, k, d, seed=6)
    cases[("perturbed_scale",)] = (KernelCase(z, r, valid, SCALE * 1.01), reference(z, r, valid, SCALE), None)
    all_valid = np.ones_like(valid)
    cases[("dropped_mask",)] = (KernelCase(z, r, all_valid, SCALE), reference(z, r, valid, SCALE), None)
    # The torch launcher also takes a bool mask (the eager model's own), passed to the kernel as 0/1 int32.
    cases[("bool_mask",)] = (KernelCase(z, r, valid != 0, SCALE), reference(z, r, valid, SCALE), None)
    return cases


@pytest.fixture(scope="module")
def results():
    cases = build_cases()
    keys = list(cases)
    outputs = run_interpreted([cases[key][0] for key in keys])
    return {key: (cases[key], out) for key, out in zip(keys, outputs, strict=True)}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [s[0] for s in SHAPES])
def test_kernel_matches_the_eager_scorer(results, shape, dtype):
    runs = {key: value for key, value in results.items() if key[:2] == (shape, dtype)}
    assert runs, "no kernel run for this shape"
    for (_, _, config), ((case, exact, rounded), out) in runs.items():
        assert out.shape == case.r.shape[:3] and out.dtype == np.float32
        # Same (rounded) inputs: fp32 accumulation leaves only summation-order differences.
        assert max_abs_error(out, rounded) <= FP32_TOL, config
        assert max_abs_error(out, exact) <= (FP32_TOL if dtype == "fp32" else FP16_TOL), config
        assert case.valid.dtype == np.int32
        assert (out[case.valid == 0] == 0.0).all(), "padded candidates must score exactly 0"
        assert (out[case.valid != 0] > 0.0).all(), "every nonzero mask value is a real candidate"


def test_every_launch_config_was_executed(results):
    executed = {key[2] for key in results if len(key) == 3}
    assert {c.name for c in LAUNCH_CONFIGS} <= executed
    # The automatic choice is the plugin's rule: vec16 for D % 16 == 0 with aligned pointers, else generic.
    assert select_config(64, (0, 16, 32, 48)).name == "vec16"
    assert select_config(50, (0, 16, 32, 48)).name == "generic"
    assert select_config(64, (0, 8, 32, 48)).name == "generic"


def test_the_comparison_detects_a_perturbed_scale(results):
    (_, expected, _), out = results[("perturbed_scale",)]
    assert max_abs_error(out, expected) > 10 * FP32_TOL


def test_the_comparison_detects_a_dropped_mask(results):
    (_, expected, _), out = results[("dropped_mask",)]
    assert max_abs_error(out, expected) > 0.1


def test_a_bool_mask_is_launched_as_int32(results):
    (case, expected, _), out = results[("bool_mask",)]
    assert case.valid.dtype == np.bool_ and max_abs_error(out, expected) <= FP32_TOL


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
def test_the_launcher_refuses_a_mask_that_is_neither_int32_nor_bool(dtype):
    """int64 would wrap to 0 on the way to int32 (2**32 is nonzero); a float mask has no exact contract."""
    z, r = torch.zeros(1, 3, 64), torch.zeros(1, 2, 3, 64)
    with pytest.raises(RequestError, match=r"valid as int32 \(nonzero = valid\) or bool; got torch\."):
        kernel_matching_score(z, r, torch.ones(1, 2, dtype=dtype), SCALE)


def test_fp16_accumulation_would_fail_the_fp32_tolerance():
    """The fp32-accumulation check is not vacuous: summing in fp16 misses FP32_TOL on the D=130 case."""
    name, b, n, k, d = SHAPES[3]
    z, r, valid = make_inputs(name, b, n, k, d, seed=3)
    zq, rq = torch.from_numpy(z.astype(np.float16)), torch.from_numpy(r.astype(np.float16))
    fp16_sum = torch.sigmoid((zq.unsqueeze(1) * rq).sum(-1, dtype=torch.float16).float() * SCALE)
    fp16_sum = torch.where(torch.from_numpy(valid != 0).unsqueeze(-1), fp16_sum, 0.0).numpy()
    assert max_abs_error(fp16_sum, reference(zq.numpy(), rq.numpy(), valid, SCALE)) > FP32_TOL


def function_model(dtype: int) -> onnx.ModelProto:
    """A model holding just the MatchingScore node and its FunctionProto reference body."""
    spec = MATCHING_SCORE
    z, r, valid = (t.name for t in spec.inputs)
    (out,) = (t.name for t in spec.outputs)
    node = helper.make_node(spec.op_type, [z, r, valid], [out], domain=spec.domain, **node_attributes(SCALE))
    graph = helper.make_graph([node], "matching_score", [
        helper.make_tensor_value_info(z, dtype, ["B", "K", "D"]),
        helper.make_tensor_value_info(r, dtype, ["B", "N", "K", "D"]),
        helper.make_tensor_value_info(valid, TensorProto.INT32, ["B", "N"]),
    ], [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["B", "N", "K"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(spec.domain, spec.version)],
                              functions=[reference_function(OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_kernel_matches_the_onnx_function_body(results, dtype):
    onnx_type = TensorProto.FLOAT if dtype == "fp32" else TensorProto.FLOAT16
    session = ort.InferenceSession(function_model(onnx_type).SerializeToString(), providers=["CPUExecutionProvider"])
    checked = 0
    for key, ((case, _, _), out) in results.items():
        if len(key) == 3 and key[1] == dtype and key[2] is None:
            (expected,) = session.run(None, {"z": case.z, "r": case.r, "valid": case.valid})
            assert max_abs_error(out, expected) <= FP32_TOL, key
            checked += 1
    assert checked == len(SHAPES)
