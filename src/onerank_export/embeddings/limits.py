"""The limits an embedding table meets in a single (inline) graph, decided from config.json alone.

Only the item table (`item_emb`, item_vocab_size x d_model, float32) is big; the action, context and
recency tables stay in the dense graph whatever the mode (docs/embeddings.md). Everything here reads
the config, never the weights, so `build` can refuse a checkpoint before any slow stage.

Limits (docs/embeddings.md#limits has the numbers):
  - TensorRT: "The volume of the tensor must be less than 2^31 elements" (ITensor, NvInfer.h of
    TensorRT 10.8). An inline table is a constant layer whose output tensor is the whole table, so
    rows x dim must be at most 2^31 - 1 (a 34M x 64 table is past it). The Weights struct itself
    counts with int64_t (NvInferRuntime.h), so the limit is the tensor volume, not the weight count.
  - ONNX: a model is one protobuf message, at most 2 GiB; past EXTERNAL_DATA_BYTES of tensor data
    the build saves ONNX's external-data format instead (export/onnx_files.py), which lifts it.
  - The fp16 and int8 converters hold the model as one protobuf and run ONNX Runtime sessions on
    serialized copies: they need the whole model under PROTOBUF_LIMIT.
"""

from __future__ import annotations

from dataclasses import dataclass

from onerank_export.config import OneRankConfig

TENSORRT_MAX_ELEMENTS = 2**31 - 1  # ITensor volume "less than 2^31" (TensorRT 10.8 NvInfer.h)
PROTOBUF_LIMIT = 2**31 - 1  # bytes of one serialized protobuf message (ONNX's 2 GB limit)
SPLIT_THRESHOLD_BYTES = 256 << 20  # --split-threshold default: auto splits tables past this
FLOAT32_BYTES = 4
MODES = ("inline", "split", "auto")


@dataclass(frozen=True)
class TableSize:
    """One embedding table as the config describes it (float32 in the checkpoint)."""

    name: str  # "item": the store's table name; the checkpoint tensor is `item_emb.weight`
    rows: int
    dim: int

    @property
    def elements(self) -> int:
        return self.rows * self.dim

    @property
    def bytes(self) -> int:
        return self.elements * FLOAT32_BYTES

    def describe(self) -> str:
        return f"{self.name} table ({self.rows:,} rows x {self.dim} = {self.elements:,} elements, {gib(self.bytes)})"

    def to_dict(self) -> dict[str, int | str]:
        return {"rows": self.rows, "dim": self.dim, "dtype": "float32", "bytes": self.bytes}


def big_tables(config: OneRankConfig) -> list[TableSize]:
    """The tables split mode takes out of the graph (today: the item table)."""
    return [TableSize("item", config.item_vocab_size, config.d_model)]


def dense_bytes_estimate(config: OneRankConfig) -> int:
    """float32 bytes of every parameter but the big tables: what stays in the dense graph."""
    d, f, k = config.d_model, config.d_ff, config.num_tasks
    block = 4 * d * d + 2 * d * f + 9 * d + f  # two LayerNorms, qkv, out, ffn up and down (with biases)
    params = (
        (config.num_anchor_tokens + k) * d  # anchors, task tokens
        + (config.action_vocab_size + config.max_hist_len + config.context_vocab_size) * d  # small tables
        + config.num_context_fields * d * d + 3 * d  # context projection and its LayerNorm
        + (config.num_cand_features + 1) * d  # candidate features
        + (config.n_layers + 1) * block + 2 * d + 2 * d  # encoder layers, interaction (+ final norm), norm_enc
        + k * d * d + k * d + 4 * d * d + 8 * d  # contextualize: task queries, q/kv/out, two norms
    )
    return FLOAT32_BYTES * params


def inline_model_bytes(config: OneRankConfig) -> int:
    """About what the fp32 inline ONNX weighs: the big tables plus the dense part."""
    return sum(t.bytes for t in big_tables(config)) + dense_bytes_estimate(config)


def needs_split(config: OneRankConfig, split_threshold: int = SPLIT_THRESHOLD_BYTES) -> str | None:
    """Why `--embeddings auto` takes the big tables out of the graph, or None to keep them inline."""
    for table in big_tables(config):
        if table.elements > TENSORRT_MAX_ELEMENTS:
            return f"{table.describe()} is past TensorRT's {TENSORRT_MAX_ELEMENTS:,} elements per tensor"
        if table.bytes > split_threshold:
            return f"{table.describe()} is past the split threshold of {gib(split_threshold)}"
    return None


def inline_problems(config: OneRankConfig, reduced_precisions: tuple[str, ...] = ()) -> list[str]:
    """One line per limit an inline build of `config` would break, each naming the table and the fix."""
    problems = []
    for table in big_tables(config):
        if table.elements > TENSORRT_MAX_ELEMENTS:
            problems.append(f"{table.describe()} exceeds TensorRT's limit of {TENSORRT_MAX_ELEMENTS:,} elements "
                            "per tensor (2^31 - 1) in inline mode; build with --embeddings split")
    size = inline_model_bytes(config)
    if reduced_precisions and size > PROTOBUF_LIMIT:
        problems.append(f"{'/'.join(reduced_precisions)} of an inline model of {gib(size)} is not supported: the "
                        f"converters need the model under ONNX's 2 GiB protobuf limit; build with --precision none "
                        "or --embeddings split")
    return problems


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"
