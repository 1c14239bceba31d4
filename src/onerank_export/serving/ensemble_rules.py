"""Triton's ensemble rules, checked on a written repository (core src/ensemble_scheduler/ensemble_utils.cc).

An ensemble is validated by Triton only against the configs of its steps, which `ModelConfig` parsing
alone never sees: `ValidateEnsembleConfig` refuses a step model that is missing or that batches less
than the ensemble (`max_batch_size` != 0 and < the ensemble's: "ensemble X allows maximum batch size N,
but it contains model Y which only allows maximum batch size to be M"), and `ValidateTensorMapping`
refuses a step input that is unmapped or mapped from a tensor of another type or shape, a mapped output
the step model does not have, and an ensemble output nothing produces. The split repositories
(serving/split_repository.py) are ensembles of a lookup and a dense model: these are the rules they
rely on. One line per violation, in backend_rules.py's format.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from onerank_export.errors import ConfigError
from onerank_export.serving.model_config import read_config

Tensor = tuple[int, tuple[int, ...]]  # (data type, dims)


def check_ensembles(repo_dir: Path) -> list[str]:
    """Every ensemble of the repository against the configs of its steps."""
    configs: dict[str, mc.ModelConfig] = {}
    for model_dir in sorted(p for p in Path(repo_dir).iterdir() if (p / "config.pbtxt").is_file()):
        try:
            configs[model_dir.name] = read_config(model_dir / "config.pbtxt")
        except ConfigError:
            continue  # backend_rules reports an unreadable config
    return [line for name, cfg in configs.items() if cfg.platform == "ensemble"
            for line in check_ensemble(name, cfg, configs)]


def check_ensemble(name: str, ensemble: mc.ModelConfig, configs: dict[str, mc.ModelConfig]) -> list[str]:
    out: list[str] = []

    def bad(problem: str, fix: str) -> None:
        out.append(f"{name}: [ensemble] {problem}; fix: {fix}")

    tensors: dict[str, Tensor] = {t.name: _tensor(t) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            bad(f"step model '{step.model_name}' is not in the repository", "write it, or drop the step")
            continue
        if model.max_batch_size != 0 and model.max_batch_size < ensemble.max_batch_size:
            bad(f"max_batch_size {ensemble.max_batch_size}, but step '{step.model_name}' allows only "
                f"{model.max_batch_size}", "give the ensemble at most its steps' max_batch_size")
        inputs = {t.name: _tensor(t) for t in model.input}
        outputs = {t.name: _tensor(t) for t in model.output}
        for unmapped in sorted(set(inputs) - set(step.input_map)):
            bad(f"input '{unmapped}' of step '{step.model_name}' is not mapped", "map every input of the step")
        for model_tensor, source in step.input_map.items():
            if model_tensor not in inputs:
                bad(f"step '{step.model_name}' has no input '{model_tensor}'", "map the step's own input names")
            elif source not in tensors:
                bad(f"'{source}' (to step '{step.model_name}') is neither an ensemble input nor an earlier "
                    "step's output", "map it from one of those")
            elif tensors[source] != inputs[model_tensor]:
                bad(f"'{source}' {_show(tensors[source])} feeds '{step.model_name}' input '{model_tensor}' "
                    f"{_show(inputs[model_tensor])}", "give both the same data type and dims")
        for model_tensor, target in step.output_map.items():
            if model_tensor not in outputs:
                bad(f"step '{step.model_name}' has no output '{model_tensor}'", "map the step's own output names")
            else:
                tensors[target] = outputs[model_tensor]
    for declared in ensemble.output:
        produced = tensors.get(declared.name)
        if produced is None:
            bad(f"output '{declared.name}' is produced by no step", "map a step output to it")
        elif produced != _tensor(declared):
            bad(f"output '{declared.name}' is declared {_show(_tensor(declared))} but produced "
                f"{_show(produced)}", "declare what the step produces")
    return out


def _tensor(t) -> Tensor:
    return t.data_type, tuple(t.dims)


def _show(tensor: Tensor) -> str:
    dtype, dims = tensor
    return f"{mc.DataType.Name(dtype)} {list(dims)}"
