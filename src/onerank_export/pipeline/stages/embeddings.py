"""Stage `embeddings` (split mode): the embedding store and the dense graph that takes looked-up rows.

Writes DIR/embeddings/ (embeddings/store.py: streamed from the checkpoint's safetensors, hashed) and
onnx/onerank.dense.fp32.onnx (the serving graph with hist_item_rows / cand_item_rows as inputs; the
export refuses a dense graph that still holds the item table). A reduced store (fp16, int8 row-wise)
is judged like a reduced-precision model: dense(lookup_store(ids)) against fp32 eager on the held-out
requests, through calibration/accuracy.py's compare and gates; a failed gate stops the build
(critical stage: its temporary directory, store and dense ONNX included, is removed).

The precision stages then make the fp16 / int8 dense graphs from onnx/onerank.dense.fp32.onnx,
calibrated and judged on this store's rows (pipeline/stages/precision.py), and the engine stage builds
one TensorRT plan per dense graph (role `dense`: the lookup stays outside the engine). Not yet in split
mode (refused in preflight with one line): the user-state cache (its user encoder would need the rows too).
"""

from __future__ import annotations

import numpy as np

from onerank_export.config import OneRankConfig
from onerank_export.errors import StageError
from onerank_export.pipeline.options import BuildOptions
from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.stages.export import ONNX_DIR, dense_onnx_file_name
from onerank_export.pipeline.state import EMBEDDINGS, MODEL, ONNX, ONNX_CPU, BuildState
from onerank_export.precision import Precision

DENSE_ONNX = dense_onnx_file_name(Precision.FP32)
# --embeddings auto: split past this many bytes of fp32 item table (docs/embeddings.md)
_STORE_PRECISION = {"fp16": Precision.FP16, "int8": Precision.INT8}


def split_mode(options: BuildOptions, config: OneRankConfig | None) -> bool:
    """The one decision (pipeline/embeddings_mode.py): the option, or auto's threshold and limits."""
    if config is None:
        return options.embeddings == "split"
    from onerank_export.pipeline.embeddings_mode import plan_embeddings

    return plan_embeddings(options, config).mode == "split"


class EmbeddingsStage(Stage):
    name = "embeddings"
    requires = (MODEL,)
    # The dense ONNX goes to state.split; `onnx`, `onnx_cpu` stay empty in split mode (no inline model;
    # the repository writer applies the CPU rewrite to the dense graphs it serves on a cpu target).
    provides = (ONNX, ONNX_CPU, EMBEDDINGS)
    critical = True  # the repository and parity serve and check these

    def preflight(self, options: BuildOptions, config: OneRankConfig) -> None:
        if options.user_cache:
            raise StageError("--user-cache is not available with --embeddings split yet (the user encoder would "
                             "need the looked-up rows too); build with --embeddings inline for the cache")

    def run(self, state: BuildState) -> StageResult:
        import time

        from onerank_export.embeddings.split import STORE_DIR
        from onerank_export.embeddings.store import open_store, write_store
        from onerank_export.export.onnx_config import SPLIT_DENSE_ONNX_CONFIG
        from onerank_export.export.onnx_export import export_onnx
        from onerank_export.serving.repository import SplitModels

        options, cfg = state.options, state.config
        store_dir = state.work / STORE_DIR
        started = time.perf_counter()
        # Rows from the loaded model's own table (no second mapping of the weights file).
        item_table = state.model.item_emb.weight.detach().numpy()
        index = write_store(state.checkpoint, store_dir, options.embedding_dtype, oov=options.embedding_oov,
                            checkpoint_sha256=state.checkpoint_sha256, loaded={"item_emb.weight": item_table})
        write_seconds = time.perf_counter() - started
        # pread, not a map: the gates' lookups must not add mapped pages to the build's RSS (row_reader.py)
        table = open_store(store_dir, verify=True, mapped=False).table("item", rows=cfg.item_vocab_size,
                                                                     dim=cfg.d_model)
        dense = state.work / ONNX_DIR / DENSE_ONNX
        exported = export_onnx(state.model, dense, checkpoint_sha256=state.checkpoint_sha256,
                               export_config=SPLIT_DENSE_ONNX_CONFIG)
        state.split = SplitModels(dense, store_dir, options.embedding_dtype, options.embedding_oov,
                                  options.embedding_backend, options.embedding_redis)
        entry = index["tables"]["item"]
        store_bytes = table.nbytes()
        metrics = {"store_dtype": entry["dtype"], "rows": entry["rows"], "dim": entry["dim"],
                   "store_bytes": store_bytes, "write_seconds": round(write_seconds, 3),
                   "rows_per_second": round(entry["rows"] / max(write_seconds, 1e-9)),
                   "dense_onnx_bytes": dense.stat().st_size, "dense_nodes": exported.num_nodes}
        artifacts = {"embedding_index": store_dir / "index.json", "embedding_table": store_dir / entry["file"],
                     "onnx_dense_fp32": dense}
        if entry["scale_file"]:
            artifacts["embedding_scale"] = store_dir / entry["scale_file"]
        detail = (f"item table {entry['rows']} x {entry['dim']} {entry['dtype']} store ({store_bytes / 2**20:.1f} MiB, "
                  f"{metrics['rows_per_second']} rows/s), dense ONNX {dense.stat().st_size / 2**20:.1f} MiB "
                  "without the item table")
        if options.embedding_dtype == "fp32":
            return StageResult(self.name, Status.OK, detail, artifacts, metrics)
        failed, gates, accuracy = self._judge(state, table)
        metrics["accuracy"] = accuracy_metrics(accuracy)
        metrics["gates"] = {g.name: g.value for g in gates}
        if failed:
            from onerank_export.calibration.accuracy import describe_gate

            # Nothing half-written: the stage is critical, so the build stops and its temporary
            # directory (store, dense ONNX) is removed; --out keeps what was there before.
            raise StageError(f"{options.embedding_dtype} embedding store failed {len(failed)} accuracy gate(s) "
                             f"against fp32 eager, first: {describe_gate(failed[0])}; "
                             "build with --embedding-dtype fp16 or fp32")
        worst_auc = max(abs(t.auc_change) for t in accuracy.tasks.values() if t.auc_change is not None)
        return StageResult(self.name, Status.OK, f"{detail}; {len(gates)} accuracy gates passed "
                           f"(max |AUC change| {worst_auc:.2g}, "
                           f"top-{accuracy.topk_overlap.k} overlap {accuracy.topk_overlap.mean:.4f}, "
                           f"max error {accuracy.max_abs_error:.2g})", artifacts, metrics)

    def settings(self, options: BuildOptions):
        """The precision stage's settings and gates for the store's dtype (tests tighten the gates here)."""
        from onerank_export.calibration.settings import CalibrationSettings

        return CalibrationSettings(_STORE_PRECISION[options.embedding_dtype], seed=options.seed)

    def _judge(self, state: BuildState, table) -> tuple[list, list, object]:
        """The reduced store through the precision stage's gates: dense(store rows) vs fp32 eager, the fp32
        dense graph on the model's own rows as the floor (what calibration/pipeline.py does for a model)."""
        from onerank_export.calibration.accuracy import apply_gates, compare, run_onnx
        from onerank_export.calibration.data import prepare_data
        from onerank_export.embeddings.split import ROW_INPUTS, lookup_rows
        from onerank_export.model.train import predict

        settings = self.settings(state.options)
        requests = prepare_data(state.config, settings, state.options.calibration_data).evaluation
        weight = state.model.item_emb.weight.detach().numpy()
        dense = str(state.split.dense)
        reference = predict(state.model.eval(), requests.contract).astype(np.float64)
        fp32 = run_onnx(dense, requests.with_inputs(lambda r: {row: weight[r[ids]] for row, ids in ROW_INPUTS.items()}),
                        settings.batch_size)
        reduced = run_onnx(dense, requests.with_inputs(lambda r: lookup_rows(table, r)), settings.batch_size)
        accuracy = compare(reference, reduced, requests, state.config.tasks, settings.gates.topk, fp32)
        gates = apply_gates(settings.precision, accuracy, settings.gates, [])
        return [g for g in gates if not g.passed], gates, accuracy


def accuracy_metrics(accuracy) -> dict:
    """What the manifest says about a reduced store: per-task AUC/GAUC change, top-k overlap, score error."""
    return {"tasks": {t: {"auc_change": m.auc_change, "gauc_change": m.gauc_change}
                      for t, m in accuracy.tasks.items()},
            f"top{accuracy.topk_overlap.k}_overlap": {"mean": accuracy.topk_overlap.mean,
                                                      "min": accuracy.topk_overlap.min},
            "max_abs_error": accuracy.max_abs_error, "p99_abs_error": accuracy.score_error.quantiles[0.99],
            "fp32_onnxruntime_max_abs_error": accuracy.fp32_onnxruntime_max_abs_error}
