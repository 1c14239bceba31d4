"""Write Triton model repositories from what `build` produced.

    DIR/model_repository/        production (GPU hosts): one model per artifact
        onerank_trt_<precision>/     platform tensorrt_plan, 1/model.plan
        onerank_onnx_<precision>/    platform onnxruntime_onnx, 1/model.onnx
    DIR/model_repository_cpu/    what the bundled CPU tritonserver (python backend) serves
        onerank/                     python backend running the fp32 ONNX with ONNX Runtime

Every config is built as a ModelConfig protobuf, written as text, then parsed back through the
schema and compared, so what lands on disk is exactly what was validated.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import StageError
from onerank_export.io import sha256_file, write_text
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.parameters import PLUGIN_PARAMETER
from onerank_export.spec import random_request

PRODUCTION_DIR = "model_repository"
CPU_DIR = "model_repository_cpu"
CPU_MODEL = "onerank"
PYTHON_MODEL_SOURCE = Path(__file__).with_name("python_model.py")


@dataclass(frozen=True)
class ModelRepositories:
    """What `write_model_repository` wrote: model names and every file, by manifest role."""

    models: list[str]  # in the production repository
    cpu_model: str  # in the CPU repository
    tensorrt_models: int
    onnx_models: int
    artifacts: dict[str, Path]


def write_model_repository(out_dir: Path, config: OneRankConfig, onnx: Mapping[str, Path],
                           engines: Mapping[str, Path], plugin_library: Path | None) -> ModelRepositories:
    """Both repositories under `out_dir`, every config validated; needs the fp32 ONNX."""
    if "fp32" not in onnx:
        raise StageError("no fp32 ONNX to serve: the CPU repository runs the fp32 model")
    if engines and plugin_library is None:
        raise StageError(f"engine {next(iter(engines.values())).name} needs the plugin library, none was built")
    artifacts: dict[str, Path] = {}
    prod = out_dir / PRODUCTION_DIR
    warm = warmup_request(config)
    models = []
    for precision, plan in sorted(engines.items()):
        name = f"onerank_trt_{precision}"
        cfg = mcfg.tensorrt_config(name, config, precision, write_warmup(prod / name, warm))
        cfg.parameters[PLUGIN_PARAMETER].string_value = str(plugin_library.relative_to(out_dir))
        cfg.parameters[PLUGIN_PARAMETER + ".sha256"].string_value = sha256_file(plugin_library)
        artifacts |= _write_model(prod / name, cfg, {"model.plan": plan})
        models.append(name)
    for precision, path in sorted(onnx.items()):
        name = f"onerank_onnx_{precision}"
        cfg = mcfg.onnxruntime_config(name, config, precision, write_warmup(prod / name, warm))
        artifacts |= _write_model(prod / name, cfg, {"model.onnx": path})
        models.append(name)
    plugin = str(plugin_library.relative_to(out_dir)) if plugin_library is not None and engines else None
    write_text(prod / "README.md", launch_notes(plugin))

    cpu_cfg = mcfg.python_onnx_config(CPU_MODEL, config, write_warmup(out_dir / CPU_DIR / CPU_MODEL, warm))
    artifacts |= _write_model(out_dir / CPU_DIR / CPU_MODEL, cpu_cfg,
                              {"model.onnx": onnx["fp32"], "model.py": PYTHON_MODEL_SOURCE})
    return ModelRepositories(models, CPU_MODEL, len(engines), len(onnx), artifacts)


def warmup_request(config: OneRankConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """One realistic, valid request at the optimisation shape, shared by every model's warm-up."""
    return random_request(config, np.random.default_rng(seed), 1, config.serving.opt_hist_len,
                          config.serving.opt_candidates)


def write_warmup(model_dir: Path, feed: dict[str, np.ndarray]) -> dict[str, str]:
    """The request as raw row-major tensors in `<model>/warmup/`, named as the config references them."""
    (model_dir / "warmup").mkdir(parents=True, exist_ok=True)
    for name, array in feed.items():
        (model_dir / "warmup" / name).write_bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                                                  .tobytes())
    return {name: name for name in feed}


def _write_model(model_dir: Path, cfg, files: dict[str, Path]) -> dict[str, Path]:
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    out = {}
    for target, source in files.items():
        shutil.copyfile(source, version / target)
        out[f"triton_{cfg.name}_{Path(target).stem}"] = version / target
    text = mcfg.to_text(cfg)
    path = write_text(model_dir / "config.pbtxt", text)
    if mcfg.read_config(path) != cfg:  # the schema round trip must be lossless
        raise AssertionError(f"{path}: config changed on re-parse")
    for name in cfg.model_warmup[0].inputs if cfg.model_warmup else ():
        expected = _warmup_bytes(cfg, name)
        actual = (model_dir / "warmup" / name).stat().st_size
        if actual != expected:
            raise AssertionError(f"{model_dir}/warmup/{name}: {actual} bytes, config dims need {expected}")
    out[f"triton_{cfg.name}_config"] = path
    return out


def _warmup_bytes(cfg, name: str) -> int:
    warm = cfg.model_warmup[0].inputs[name]
    dtype = next(t for t in spec.INPUTS if t.name == name).np_dtype
    return int(np.prod(list(warm.dims))) * cfg.model_warmup[0].batch_size * dtype.itemsize


def launch_notes(plugin: str | None) -> str:
    """The repository's README: how to serve it; `plugin` is the library's path relative to the build."""
    plugin_notes = ("\nTensorRT models need the OneRank plugin loaded by the server:\n\n"
                    "    tritonserver --model-repository $PWD/model_repository \\\n"
                    f"        --backend-config=tensorrt,plugins=$PWD/{plugin}\n"
                    f"\n(or LD_PRELOAD=$PWD/{plugin}). Each TensorRT model records the plugin's\n"
                    f"relative path and sha256 in its `{PLUGIN_PARAMETER}` parameters.\n")
    return ("# OneRank model repository (production)\n\n"
            "Written by `onerank-export build`; every config.pbtxt was validated with Triton's ModelConfig schema.\n"
            "Serve on a GPU host with NVIDIA's Triton container (onnxruntime and tensorrt backends):\n\n"
            "    tritonserver --model-repository $PWD/model_repository\n"
            + (plugin_notes if plugin else "")
            + "\nONNX models have one GPU and one CPU instance group; remove the one your host does not have.\n"
            "For a CPU-only host, serve ../model_repository_cpu (python backend + ONNX Runtime) with\n"
            "`onerank-export serve --repository <build dir>`.\n")
