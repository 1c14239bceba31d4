"""Build a serialized TensorRT engine from an ONNX file with the TensorRT Python API (10.8+ and 11.x).

Precision is decided in the ONNX, not by builder flags: the network is strongly typed (TensorRT
10 opts in with NetworkDefinitionCreationFlag.STRONGLY_TYPED; in TensorRT 11 every network is,
and the flag is deprecated), so the fp16 ONNX builds in fp16 with its fp32 islands and the int8
ONNX builds from its explicit Q/DQ pairs. No BuilderFlag FP16/INT8 and no calibrator: TensorRT 11
removed them, and TensorRT 10 rejects them on strongly typed networks.

The TensorRT calls are in `_build_serialized` and the helpers it calls (names audited by
tests/engine/tensorrt/test_tensorrt_api_names.py); everything around them is plain Python.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import onnx

from onerank_export.config import OneRankConfig
from onerank_export.engine.tensorrt.api import (
    import_tensorrt,
    last_logged_error,
    load_plugin_library,
    shared_logger,
    tensorrt_major,
    tensorrt_version,
)
from onerank_export.engine.tensorrt.plan_metadata import (
    ROLES,
    SERVING,
    ProfileShapes,
    cuda_device_identity,
    metadata_path,
    optimization_profile,
    plan_metadata,
    write_plan_metadata,
)
from onerank_export.engine.tensorrt.profile import onnx_io_dtypes, require_valid_profile
from onerank_export.errors import StageError
from onerank_export.export.custom_op import MATCHING_SCORE
from onerank_export.io import write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

DEFAULT_WORKSPACE_BYTES = 2 << 30
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EngineBuild:
    plan: Path
    metadata: Path
    seconds: float
    tensorrt_version: str
    compute_capability: str
    plugin_layers: int
    timing_cache_reused: bool


def default_timing_cache_path(tensorrt_version: str, compute_capability: str) -> Path:
    """One cache per TensorRT version and GPU architecture (a cache is only valid for both)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "onerank-export" / "tensorrt" / f"timing-trt{tensorrt_version}-sm{compute_capability}.cache"


def onnx_facts(onnx_path: Path) -> tuple[str, int]:
    """(the graph's role as its export recorded it, number of MatchingScore nodes)."""
    from onerank_export.export.metadata import GRAPH_KEY, model_metadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    role = model_metadata(model).get(GRAPH_KEY, SERVING)
    nodes = sum(n.domain == MATCHING_SCORE.domain and n.op_type == MATCHING_SCORE.op_type for n in model.graph.node)
    return role, nodes


def check_build_inputs(onnx_path: Path, role: str, plugin_library: Path | None) -> int:
    """What can be refused before TensorRT is loaded: the ONNX is the role's graph, a graph with
    MatchingScore nodes has a plugin library. Returns the number of MatchingScore nodes."""
    if role not in ROLES:
        raise StageError(f"unknown engine role {role!r} (known: {', '.join(ROLES)})")
    found, nodes = onnx_facts(onnx_path)
    if found != role:
        raise StageError(f"{onnx_path.name} is the {found} graph, not the {role} graph; pass the {role} ONNX")
    if nodes and plugin_library is None:
        raise StageError(f"{onnx_path.name} has {nodes} {MATCHING_SCORE.op_type} node(s); "
                         "a plugin library is needed to build it (--plugin, or let the engine stage build it)")
    return nodes


def parser_error_line(onnx_name: str, index: int, total: int, node: int, node_name: str, operator: str,
                      desc: str) -> str:
    """One line for the first ONNX parser error, naming the node."""
    where = f"node {node} '{node_name}' ({operator})" if node >= 0 else "the graph"
    more = f" (+{total - index - 1} more errors)" if total > index + 1 else ""
    return f"{onnx_name}: TensorRT's ONNX parser failed at {where}: {' '.join(desc.split())}{more}"


def build_engine(onnx_path: Path, plan_path: Path, config: OneRankConfig, precision: str, *,
                 plugin_library: Path | None, role: str = SERVING, timing_cache: Path | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, progress: Progress | None = None) -> EngineBuild:
    """Build `plan_path` (+ `<plan>.json`) from `onnx_path`; a one-line StageError on failure.

    `role`: which graph `onnx_path` is (serving, user_encoder, candidate_scorer, or split mode's
    dense graph): it picks the optimisation profile and is recorded in the metadata with the graph's
    I/O dtypes. Every role but user_encoder has a MatchingScore node and needs `plugin_library`.
    The plan is written atomically: a failed build leaves no plan behind.
    """
    note = progress or (lambda _msg: None)
    # Refused before TensorRT is touched, so these checks hold (and are tested) on any host.
    expected_plugin_nodes = check_build_inputs(onnx_path, role, plugin_library)
    profile = optimization_profile(config, role)
    require_valid_profile(onnx_path, profile)
    trt = import_tensorrt()
    version = tensorrt_version(trt)
    gpu_name, capability = cuda_device_identity()
    timing_cache = timing_cache or default_timing_cache_path(version, capability)

    note(f"TensorRT {version} on {gpu_name} (sm {capability}): building {plan_path.name} from {onnx_path.name}")
    started = time.perf_counter()
    serialized, plugin_layers, reused = _build_serialized(trt, onnx_path, profile, plugin_library, timing_cache,
                                                          workspace_bytes, note)
    seconds = time.perf_counter() - started
    if expected_plugin_nodes and plugin_layers < expected_plugin_nodes:
        raise StageError(f"{onnx_path.name}: the parser mapped {plugin_layers} of {expected_plugin_nodes} "
                         f"{MATCHING_SCORE.op_type} node(s) to the plugin (it expanded the reference function "
                         "instead); check the node's plugin_namespace attribute and the plugin library")

    write_bytes(plan_path, serialized)
    meta = plan_metadata(plan=plan_path, precision=precision, tensorrt_version=version, gpu_name=gpu_name,
                         compute_capability=capability, profile=profile, onnx=onnx_path,
                         plugin_library=plugin_library, build_seconds=seconds, role=role,
                         extra={"io_dtypes": onnx_io_dtypes(onnx_path), "plugin_layers": plugin_layers,
                                "workspace_bytes": workspace_bytes,
                                "strongly_typed": True, "tf32": False,
                                "timing_cache": {"file": str(timing_cache), "reused": reused}})
    meta_file = write_plan_metadata(metadata_path(plan_path), meta)
    note(f"wrote {plan_path.name} ({plan_path.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s")
    return EngineBuild(plan_path, meta_file, seconds, version, capability, plugin_layers, reused)


# ----- TensorRT calls -----------------------------------------------------------------------------


def _build_serialized(trt: ModuleType, onnx_path: Path, profile: ProfileShapes, plugin_library: Path | None,
                      timing_cache: Path, workspace_bytes: int, note: Progress) -> tuple[bytes, int, bool]:
    """(serialized plan, number of plugin layers, whether a timing cache was reused)."""
    logger = shared_logger(trt)
    logger.last_error = ""  # report this build's error, not an earlier one's
    builder = trt.Builder(logger)
    if plugin_library is not None:
        load_plugin_library(trt, builder.get_plugin_registry(), plugin_library)
    network = builder.create_network(_network_flags(trt))
    _parse_onnx(trt, network, onnx_path)
    plugin_layers = _count_plugin_layers(trt, network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    # TF32 is on by default and rounds fp32 matmul inputs to 10-bit mantissas: the ONNX decides precision.
    config.clear_flag(trt.BuilderFlag.TF32)
    _add_profile(trt, builder, config, network, profile)
    reused = _load_timing_cache(trt, config, timing_cache)
    config.progress_monitor = _progress_monitor(trt, note)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StageError(f"{onnx_path.name}: TensorRT could not build the engine: {last_logged_error(trt)}")
    _save_timing_cache(config, timing_cache)
    return bytes(memoryview(serialized)), plugin_layers, reused


def _network_flags(trt: ModuleType) -> int:
    # TensorRT 11: always strongly typed, the flag is deprecated; 10.x must opt in.
    if tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse_onnx(trt: ModuleType, network: trt.INetworkDefinition, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, shared_logger(trt))
    # No OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE: the parser imports a node as a registered plugin when the
    # flag is set *or* the node has a plugin_namespace attribute (onnx-tensorrt ModelImporter parseNode), and
    # ours has one. The flag would also let any registered creator named like a built-in op replace it
    # (NvOnnxParser.h). docs/engine.md has the rule per TensorRT version.
    if not parser.parse_from_file(str(onnx_path)):
        total = int(parser.num_errors)
        if total == 0:
            raise StageError(f"{onnx_path.name}: TensorRT's ONNX parser failed: {last_logged_error(trt)}")
        first = parser.get_error(0)
        raise StageError(parser_error_line(onnx_path.name, 0, total, int(first.node()), str(first.node_name()),
                                           str(first.node_operator()), str(first.desc())))


def _count_plugin_layers(trt: ModuleType, network: trt.INetworkDefinition) -> int:
    return sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers))


def _add_profile(trt: ModuleType, builder: trt.Builder, config: trt.IBuilderConfig,
                 network: trt.INetworkDefinition, profile: ProfileShapes) -> None:
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(profile):
        missing = sorted(set(profile) - inputs) or sorted(inputs - set(profile))
        raise StageError(f"network inputs {sorted(inputs)} differ from the profile's {sorted(profile)} "
                         f"(first difference: '{missing[0]}'); re-export the ONNX with this version")
    optimization_profile = builder.create_optimization_profile()
    for name, (min_shape, opt_shape, max_shape) in profile.items():
        optimization_profile.set_shape(name, min_shape, opt_shape, max_shape)
    if config.add_optimization_profile(optimization_profile) < 0:
        raise StageError(f"TensorRT rejected the optimisation profile {dict(profile)}")


def _load_timing_cache(trt: ModuleType, config: trt.IBuilderConfig, path: Path) -> bool:
    """Start from the cache at `path` when TensorRT accepts it; else from an empty one."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    write_bytes(path, memoryview(cache.serialize()))  # concurrent builds: last writer wins, never a torn file


def _progress_monitor(trt: ModuleType, note: Progress) -> trt.IProgressMonitor:
    """Report TensorRT's top-level build phases (nested phases would flood the console)."""

    class PhaseReporter(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.started[phase_name] = time.perf_counter()
                note(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            if phase_name in self.started:
                note(f"  {phase_name} done in {time.perf_counter() - self.started.pop(phase_name):.1f} s")

    return PhaseReporter()
