"""The Triton model repository of a split-mode build (docs/embeddings.md): a lookup model in front of the
dense graph, behind ensembles that carry the names and the contract of the inline repository of the same
target, so a client cannot tell the modes apart.

    target cpu (every instance KIND_CPU)
        onerank                      ensemble: onerank_lookup -> onerank_dense (what the bundled server serves)
        onerank_onnx_<p>             ensemble: onerank_lookup -> onerank_dense_onnx_<p>
        onerank_lookup               python backend: ids -> rows from the store (../../embeddings, never copied)
        onerank_dense                python backend: the fp32 dense ONNX in ONNX Runtime
        onerank_dense_onnx_<p>       onnxruntime_onnx, the dense ONNX after the exact CPU rewrite
    target gpu
        onerank_onnx_<p>             ensemble: onerank_lookup -> onerank_dense_onnx_<p>
        onerank_trt_<p>              ensemble: onerank_lookup -> onerank_dense_trt_<p> (where a plan was built)
        onerank_lookup               python backend, KIND_CPU: the rows live in host memory (mmap) or Redis
        onerank_dense_onnx_<p>       onnxruntime_onnx, KIND_GPU, the dense ONNX as exported
        onerank_dense_trt_<p>        tensorrt_plan, KIND_GPU, the dense plan (plugin parameters as inline)

Every config goes through the schema round trip of `repository._write_model`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from onerank_export.config import OneRankConfig
from onerank_export.errors import StageError
from onerank_export.io import write_text
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.parameters import (
    EMBEDDING_BACKEND_PARAMETER,
    EMBEDDING_REDIS_URL_PARAMETER,
    PLUGIN_PARAMETER,
)
from onerank_export.serving.profiles import ServingPlan, Target
from onerank_export.serving.repository import (
    CPU_MODEL,
    DENSE_MODEL,
    DENSE_MODEL_SOURCE,
    LOOKUP_MODEL,
    LOOKUP_MODEL_SOURCE,
    REPOSITORY_DIR,
    ModelRepository,
    SplitModels,
    _write_model,
    launch_notes,
    plugin_parameters,
    set_parameters,
)


def dense_model_name(backend: str, precision: str) -> str:
    """`onerank_dense_onnx_<p>` / `onerank_dense_trt_<p>`: the dense step of the ensemble `onerank_<backend>_<p>`."""
    return f"{DENSE_MODEL}_{backend}_{precision}"


def write_split_repository(out_dir: Path, config: OneRankConfig, plan: ServingPlan, split: SplitModels,
                           dense: Mapping[str, Path], engines: Mapping[str, Path] | None = None,
                           plugin_library: Path | None = None) -> ModelRepository:
    """`out_dir`/model_repository of a split build for `plan.target`. `dense`: {precision: the dense ONNX}
    (fp32 required); `engines`: {precision: the dense TensorRT plan} (served on a gpu target; a cpu
    target does not serve plans); `plugin_library`: the MatchingScore plugin every plan needs."""
    from onerank_export.embeddings.split import LOOKUP_OUTPUT_NAMES

    dense = {str(p): Path(path) for p, path in dense.items()}
    engines = {str(p): Path(path) for p, path in (engines or {}).items()} if plan.target is Target.GPU else {}
    # Everything that can be refused is refused before the first file is written.
    if "fp32" not in dense:
        raise StageError("no fp32 dense ONNX to serve; the embeddings stage writes onerank.dense.fp32.onnx")
    if engines and plugin_library is None:
        raise StageError(f"dense engine {next(iter(engines.values())).name} needs the plugin library, none was "
                         "given; build the engines with the engine stage (it builds the plugin) or pass --plugin")
    without_onnx = sorted(set(engines) - set(dense))
    if without_onnx:
        raise StageError(f"dense engine of precision {without_onnx[0]} has no dense ONNX of that precision; an "
                         "engine is served beside the graph it was built from")
    for precision, path in dense.items():  # the lookup hands float32 rows to every dense model
        _require_contract_types(path, precision, LOOKUP_OUTPUT_NAMES)
    plugin = plugin_parameters(plugin_library, out_dir) if engines else {}

    repo = out_dir / REPOSITORY_DIR
    artifacts: dict[str, Path] = {}
    models = [LOOKUP_MODEL]
    artifacts |= _write_model(repo / LOOKUP_MODEL, _lookup_config(repo, config, plan, split),
                              {"model.py": LOOKUP_MODEL_SOURCE})
    ensembles: dict[str, tuple[str, str]] = {}  # ensemble name -> (its dense step, precision)
    for precision, path in sorted(dense.items()):
        name = dense_model_name("onnx", precision)
        artifacts |= _write_dense_onnx(repo / name, mcfg.dense_onnxruntime_config(name, config, precision, plan),
                                       path, plan.target)
        ensembles[f"onerank_onnx_{precision}"] = (name, precision)
    for precision, path in sorted(engines.items()):
        name = dense_model_name("trt", precision)
        cfg = mcfg.dense_tensorrt_config(name, config, precision, plan)
        set_parameters(cfg, plugin)
        artifacts |= _write_model(repo / name, cfg, {"model.plan": path})
        ensembles[f"onerank_trt_{precision}"] = (name, precision)
    python_model = None
    if plan.target is Target.CPU:  # what the bundled tritonserver (python backend only) serves
        artifacts |= _write_model(repo / DENSE_MODEL, mcfg.dense_python_config(DENSE_MODEL, config, plan),
                                  {"model.onnx": dense["fp32"], "model.py": DENSE_MODEL_SOURCE})
        ensembles = {CPU_MODEL: (DENSE_MODEL, "fp32"), **ensembles}
        python_model = CPU_MODEL
    models += [step for step, _ in ensembles.values()]
    for ensemble, (step, precision) in ensembles.items():
        artifacts |= _write_model(repo / ensemble, mcfg.ensemble_config(ensemble, config, LOOKUP_MODEL, step,
                                                                         precision), {})
        models.append(ensemble)
    artifacts["triton_readme"] = write_text(repo / "README.md", launch_notes(plan, plugin.get(PLUGIN_PARAMETER))
                                            + split_notes(plan.target, ensembles))
    return ModelRepository(repo, plan, models, python_model, len(engines), len(dense), artifacts)


def _lookup_config(repo: Path, config: OneRankConfig, plan: ServingPlan, split: SplitModels):
    """The lookup reads the build's one store through a path relative to its model directory: no copy."""
    store = Path(os.path.relpath(split.store, repo / LOOKUP_MODEL))
    lookup = mcfg.lookup_config(LOOKUP_MODEL, config, plan, str(store))
    if split.backend == "redis":
        lookup.parameters[EMBEDDING_BACKEND_PARAMETER].string_value = "redis"
        lookup.parameters[EMBEDDING_REDIS_URL_PARAMETER].string_value = split.redis_url or ""
    return lookup


def _write_dense_onnx(model_dir: Path, cfg, source: Path, target: Target) -> dict[str, Path]:
    """A gpu target serves the file as exported; a cpu target the exact CPU rewrite (export/ort_cpu_graph.py),
    since Triton's ONNX Runtime backend loads the file as it is."""
    if target is Target.GPU:
        return _write_model(model_dir, cfg, {"model.onnx": source})
    from onerank_export.export.ort_cpu_graph import write_ort_cpu_model

    rewritten = write_ort_cpu_model(source, model_dir / "1" / "model.onnx")
    return {**_write_model(model_dir, cfg, {}), f"triton_{cfg.name}_model": rewritten}


def _require_contract_types(path: Path, precision: str, rows: tuple[str, ...]) -> None:
    """A dense graph whose I/O types differ from the contract's (float32 rows and features, int64 ids,
    float32 scores) cannot sit behind the lookup and the ensemble; one line naming the tensor."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from onerank_export import spec

    wanted = {t.name: t.dtype for t in (*spec.INPUTS, *spec.OUTPUTS)} | dict.fromkeys(rows, "float32")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    have = {v.name for v in (*model.graph.input, *model.graph.output) if v.name not in initializers}
    missing = sorted(set(wanted) - have)
    if missing:
        raise StageError(f"{path.name} ({precision}): no '{missing[0]}' tensor, so it is not the split dense graph "
                         "the ensemble feeds; give the build's onerank.dense.<p>.onnx")
    for value in (*model.graph.input, *model.graph.output):
        got = tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        if value.name in wanted and got != wanted[value.name]:
            raise StageError(f"{path.name} ({precision}): '{value.name}' is {got}, the ensemble passes "
                             f"{wanted[value.name]}; export the {precision} dense graph with the contract's I/O types")


def split_notes(target: Target, steps: Mapping[str, tuple[str, str]]) -> str:
    """The README section: what the ensembles are and how to serve them. `steps`: {ensemble: (its dense
    step, precision)}; the gpu launch command loads the fp32 TensorRT ensemble where there is one, else
    the fp32 ONNX Runtime one (always written: a name that does not exist fails an explicit-mode start)."""
    ensembles = sorted(steps)
    head = ("\n## Split mode (docs/embeddings.md)\n\n"
            f"The ensembles {', '.join(f'`{e}`' for e in ensembles)} each run `onerank_lookup` (python backend,\n"
            "KIND_CPU: it reads item rows from the embedding store, or Redis) and then a dense model on the\n"
            "rows; clients see the names and the contract of the inline repository. The store is not copied:\n"
            "`onerank_lookup` memory-maps `../../embeddings` (its `onerank.embedding_store` parameter, relative\n"
            "to `model_repository/onerank_lookup/`). Moving the repository without the build directory: move\n"
            "`embeddings/` along at the same relative place, or set the parameter to the store's absolute path.\n")
    if target is Target.CPU:
        return head + ("\n`onerank` runs the python-backend `onerank_dense` (what `onerank-export serve` loads\n"
                       "here); on NVIDIA's Triton container the `onerank_onnx_<p>` ensembles run the ONNX Runtime\n"
                       "backend's `onerank_dense_onnx_<p>` instead.\n")
    ensemble = "onerank_trt_fp32" if "onerank_trt_fp32" in steps else "onerank_onnx_fp32"
    step = steps[ensemble][0]
    return head + ("\nOn a GPU host, NVIDIA's Triton container needs the python backend (for the lookup) beside\n"
                   "onnxruntime and tensorrt; the lookup model imports onerank_export and numpy (give its stub a\n"
                   "Python environment with the package: the python backend's EXECUTION_ENV_PATH parameter):\n\n"
                   "    tritonserver --model-repository $PWD/model_repository --model-control-mode explicit \\\n"
                   f"        --load-model onerank_lookup --load-model {step} \\\n"
                   f"        --load-model {ensemble}\n"
                   "\n(each ensemble with its two steps; add the plugin flag above for the TensorRT models).\n")
