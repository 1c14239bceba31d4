"""Export the serving graph to ONNX (dynamo exporter) with the onerank::MatchingScore custom node.

Dynamic axes come from the one serving-contract spec (`spec.py`). After export the model gets
the op's FunctionProto reference body, readable node names derived from the module scopes,
and metadata (config, checkpoint digest); then `onnx.checker` (full) and shape inference run.
Exporting the same checkpoint twice gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from onerank_export import __version__, spec
from onerank_export.errors import StageError
from onerank_export.export.custom_op import MATCHING_SCORE, reference_function
from onerank_export.export.graph_cleanup import clean_graph
from onerank_export.export.serving_graph import ServingGraph
from onerank_export.model.onerank import OneRankModel

OPSET = 20  # TensorRT 10.0+ parses opsets 9..20; onnxruntime any recent
# Example sizes: distinct, > 1, so the exporter cannot confuse or specialise dynamic axes.
EXAMPLE_DIMS = {spec.BATCH: 2, spec.HIST_LEN: 11, spec.NUM_CANDIDATES: 7}


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    opset: int
    num_nodes: int
    custom_nodes: int


def example_inputs(model: OneRankModel) -> tuple[torch.Tensor, ...]:
    """A small valid request: some history and candidates real, the rest padding."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    out = []
    for s in spec.INPUTS:
        shape = s.shape_for(cfg, EXAMPLE_DIMS)
        if s.vocab_field is None:
            out.append(torch.randn(shape, generator=g))
        else:
            t = torch.randint(1, getattr(cfg, s.vocab_field), shape, generator=g)
            if s.name.startswith("hist"):
                t[0, :3] = 0
            if s.name == "cand_item_ids":
                t[1, -2:] = 0
            out.append(t)
    return tuple(out)


def dynamic_shapes(model: OneRankModel) -> dict[str, dict[int, torch.export.Dim]]:
    cfg = model.cfg
    dims = {a: torch.export.Dim(a, min=1, max=max(spec.axis_range(cfg, a)[2], 2)) for a in spec.DYNAMIC_AXES}
    return {s.name: {i: dims[a] for i, a in enumerate(s.axes) if a in dims} for s in spec.INPUTS}


def export_onnx(model: OneRankModel, path: str | Path, *, metadata: dict[str, str] | None = None,
                opset: int = OPSET) -> ExportedModel:
    """Export `model`'s serving graph to `path`; returns a summary. Raises StageError on failure."""
    path = Path(path)
    graph = ServingGraph(model.eval()).eval()
    try:
        with torch.no_grad(), _quiet():
            program = torch.onnx.export(
                graph, example_inputs(model), dynamo=True, dynamic_shapes=dynamic_shapes(model),
                input_names=list(spec.INPUT_NAMES), output_names=list(spec.OUTPUT_NAMES),
                opset_version=opset, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; report one line
        raise StageError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    proto = finalize(program.model_proto, model, opset, metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    custom = sum(1 for n in proto.graph.node if n.domain == MATCHING_SCORE.domain)
    return ExportedModel(path, opset, len(proto.graph.node), custom)


def finalize(proto: onnx.ModelProto, model: OneRankModel, opset: int, metadata: dict[str, str]
             ) -> onnx.ModelProto:
    """Add the FunctionProto, readable names and metadata; validate."""
    custom = [n for n in proto.graph.node if n.domain == MATCHING_SCORE.domain]
    if len(custom) != 1 or custom[0].op_type != MATCHING_SCORE.op_type:
        raise StageError(f"export produced {len(custom)} {MATCHING_SCORE.domain} nodes, expected exactly one "
                         f"{MATCHING_SCORE.op_type}")
    del proto.functions[:]
    proto.functions.append(reference_function(opset))
    clean_graph(proto.graph)
    proto.producer_name = "onerank-export"
    proto.producer_version = __version__
    proto.doc_string = "OneRank serving graph (request-structured) with onerank::MatchingScore"
    set_model_metadata(proto, {"onerank.config": model.cfg.to_json(), **metadata})
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageError(f"exported ONNX failed validation: {str(exc).splitlines()[0]}") from exc
    return proto


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress lines and warnings; keep the CLI output ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict (onerank.config, onerank.precision, checkpoint sha ...)."""
    return {p.key: p.value for p in model.metadata_props}


def set_model_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's metadata_props, in sorted order (byte-identical exports)."""
    del model.metadata_props[:]
    for key in sorted(props):
        model.metadata_props.add(key=key, value=props[key])
