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

from onerank_export import __version__
from onerank_export.errors import StageError
from onerank_export.export.custom_op import MATCHING_SCORE, reference_function
from onerank_export.export.graph_cleanup import clean_graph
from onerank_export.export.metadata import GRAPH_KEY, OnnxMetadata
from onerank_export.export.onnx_config import ONERANK_ONNX_CONFIG, OneRankOnnxConfig
from onerank_export.export.onnx_files import data_file_name, external_data_threshold, save_onnx, staging_dir
from onerank_export.export.serving_graph import ServingGraph
from onerank_export.model.onerank import OneRankModel
from onerank_export.precision import Precision

DOC_STRINGS = {
    "serving": "OneRank serving graph (request-structured) with onerank::MatchingScore",
    "user_encoder": "OneRank user encoder: history -> each layer's user keys and values (user-state cache)",
    "candidate_scorer": "OneRank candidate scorer: user states + context + candidates -> scores, "
                        "with onerank::MatchingScore",
    "dense": "OneRank dense graph (split mode): the serving graph taking the looked-up item rows as inputs "
             "(hist_item_rows, cand_item_rows), with onerank::MatchingScore; the item table is in the embedding store",
}


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    opset: int
    num_nodes: int
    custom_nodes: int


def export_onnx(model: OneRankModel, path: str | Path, *, checkpoint_sha256: str | None = None,
                export_config: OneRankOnnxConfig = ONERANK_ONNX_CONFIG) -> ExportedModel:
    """Export `model`'s serving graph to `path` (written atomically); StageError on failure."""
    path = Path(path)
    graph = export_config.module(ServingGraph(model.eval()).eval()).eval()
    cfg = model.cfg
    try:
        with torch.no_grad(), _quiet():
            program = torch.onnx.export(
                graph, export_config.example_inputs(model), dynamo=True,
                dynamic_shapes=export_config.dynamic_shapes(model),
                input_names=list(export_config.input_names_for(cfg)),
                output_names=list(export_config.output_names_for(cfg)),
                opset_version=export_config.opset, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; report one line
        raise StageError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    # The single graph carries no role key (its bytes predate the split); each half names itself.
    other = {} if export_config.role == "serving" else {GRAPH_KEY: export_config.role}
    metadata = OnnxMetadata(config_json=cfg.to_json(), checkpoint_sha256=checkpoint_sha256,
                            precision=Precision.FP32, other=other)
    with staging_dir(path) as staging:
        threshold = external_data_threshold()
        big = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                  if v.const_value is not None) > threshold
        if big:  # the tables go from the model's tensors straight to the data file, never into the proto
            stream_tables(program.model, staging / data_file_name(path), min(threshold, STREAM_BYTES))
        proto = program.model_proto
        del program
        proto = finalize(proto, export_config.opset, metadata, role=export_config.role,
                         matching_score_nodes=export_config.matching_score_nodes, validate=not big)
        if export_config.role == "dense":
            _check_no_item_table(proto, cfg.item_vocab_size)
        custom = sum(1 for n in proto.graph.node if n.domain == MATCHING_SCORE.domain)
        num_nodes = len(proto.graph.node)
        try:  # past the threshold: external data, validated on the file (no 2 GiB message is ever made)
            save_onnx(proto, path, validate=big, staging=staging)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise StageError(f"exported ONNX failed validation: {str(exc).splitlines()[0]}") from exc
    return ExportedModel(path, export_config.opset, num_nodes, custom)


STREAM_BYTES = 1 << 20  # embedding tables at least this big (or the lowered threshold) are streamed


def stream_tables(model, data_path: Path, min_bytes: int) -> None:
    """Write every embedding table (an initializer read only as a Gather's data) of at least
    `min_bytes` to `data_path` from the tensor's own memory (torch -> numpy shares it) and make the IR
    reference it as external data: serializing the model then copies no table bytes. `save_onnx`
    appends the other tensors to the same file."""
    import onnx_ir as ir

    readers: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph:
        for index, value in enumerate(node.inputs):
            if value is not None and value.name in model.graph.initializers:
                readers.setdefault(value.name, set()).add((node.op_type, index))
    offset = 0
    with open(data_path, "wb") as f:
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is None or tensor.nbytes < min_bytes or readers.get(name) != {("Gather", 0)}:
                continue
            array = tensor.numpy()
            array.tofile(f)  # contiguous: written from the tensor's memory, no copy
            value.const_value = ir.ExternalTensor(data_path.name, offset, array.nbytes, tensor.dtype,
                                                  shape=tensor.shape, name=name, base_dir=data_path.parent)
            offset += array.nbytes


def finalize(proto: onnx.ModelProto, opset: int, metadata: OnnxMetadata, *, role: str = "serving",
             matching_score_nodes: int = 1, validate: bool = True) -> onnx.ModelProto:
    """Add the FunctionProto, readable names and metadata; validate (in memory: under 2 GiB only)."""
    custom = [n for n in proto.graph.node if n.domain == MATCHING_SCORE.domain]
    if len(custom) != matching_score_nodes or any(n.op_type != MATCHING_SCORE.op_type for n in custom):
        raise StageError(f"export of the {role} graph produced {len(custom)} {MATCHING_SCORE.domain} nodes, "
                         f"expected {matching_score_nodes} {MATCHING_SCORE.op_type}")
    del proto.functions[:]
    if custom:
        proto.functions.append(reference_function(opset))
    else:  # no custom node: drop the custom domain's opset import the exporter may have left
        keep = [o for o in proto.opset_import if o.domain != MATCHING_SCORE.domain]
        del proto.opset_import[:]
        proto.opset_import.extend(keep)
    clean_graph(proto.graph)
    proto.producer_name = "onerank-export"
    proto.producer_version = __version__
    proto.doc_string = DOC_STRINGS[role]
    metadata.apply(proto)
    if not validate:
        return proto
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageError(f"exported ONNX failed validation: {str(exc).splitlines()[0]}") from exc
    return proto


def _check_no_item_table(proto: onnx.ModelProto, rows: int) -> None:
    """The split dense graph must not carry the item table: that is the point of split mode."""
    for init in proto.graph.initializer:
        if len(init.dims) == 2 and init.dims[0] == rows:
            raise StageError(f"the dense graph holds initializer '{init.name}' {list(init.dims)} "
                             "(item_vocab_size rows): the item table leaked into the split export; "
                             "this is a bug in the serving graph")


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
