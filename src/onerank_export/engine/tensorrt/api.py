"""The TensorRT calls the engine builder and the TensorRT runner share: import, logger, version,
plugin library loading.

Every TensorRT name used here, in `builder.py` and in `parity/tensorrt_runner.py` is audited by
tests/engine/tensorrt/test_tensorrt_api_names.py against the compiled bindings of TensorRT 10.8 and 11.4.
Conventions that audit relies on: the module is only ever bound to the name `trt`; objects
obtained from it are passed between functions as parameters annotated `trt.<Type>`; a name that
exists in only one supported release is read with `getattr(obj, "NAME", None)`.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from onerank_export.errors import StageError
from onerank_export.export.custom_op import MATCHING_SCORE

if TYPE_CHECKING:
    import tensorrt as trt

LOG_PREFIX = "[TensorRT]"


def import_tensorrt() -> ModuleType:
    """The tensorrt module, or a one-line StageError saying why it cannot be used here."""
    from onerank_export.engine.tensorrt.availability import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        raise StageError(f"TensorRT cannot run here: {reason}")
    import tensorrt as trt

    return trt


def tensorrt_version(trt: ModuleType) -> str:
    return str(trt.__version__)


def tensorrt_major(trt: ModuleType) -> int:
    return int(tensorrt_version(trt).split(".")[0])


@functools.lru_cache(maxsize=1)
def shared_logger(trt: ModuleType) -> trt.ILogger:
    """One logger per process (TensorRT warns when builders and runtimes get different ones).

    It prints warnings and errors to stderr like TensorRT's default logger and keeps the last
    error so a failed build can be reported in one line.
    """

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""
            self.shown = {trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                          trt.ILogger.Severity.WARNING}
            self.errors = {trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR}

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in self.errors:
                self.last_error = " ".join(str(msg).split())
            if severity in self.shown:
                print(f"{LOG_PREFIX} {msg}", file=sys.stderr, flush=True)

    return CapturingLogger()


def last_logged_error(trt: ModuleType) -> str:
    """The last error the shared logger saw, for a one-line message."""
    return shared_logger(trt).last_error or "see the [TensorRT] messages above"


def load_plugin_library(trt: ModuleType, registry: trt.IPluginRegistry, path: Path) -> None:
    """Register the MatchingScore plugin creator from `path` and check that it is there.

    plugins/ builds two flavours (see its pluginRegistration.cpp): libonerank_plugins.so registers
    its creator from a static initialiser when it is loaded, so a plain dlopen is the whole job;
    libonerank_plugins_dynamic.so exports getCreators + setLoggerFinder for
    `IPluginRegistry.load_library`. dlopen first (harmless for the dynamic flavour), then
    load_library only if no creator appeared: calling load_library on the static flavour would
    register the creator twice. Either way the creator must then be found by the name, version and
    namespace the ONNX node carries.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"plugin library {path} does not exist; build it with "
                         "onerank_export.engine.plugin.build.build_plugin_library or pass --plugin")
    spec = MATCHING_SCORE
    if registry.get_creator(spec.op_type, spec.plugin_version, spec.plugin_namespace) is not None:
        return  # already registered in this process
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise StageError(f"plugin library {path} cannot be loaded: {str(exc).splitlines()[0]}") from None
    if registry.get_creator(spec.op_type, spec.plugin_version, spec.plugin_namespace) is None:
        registry.load_library(str(path))
    if registry.get_creator(spec.op_type, spec.plugin_version, spec.plugin_namespace) is None:
        raise StageError(f"plugin library {path} loaded but registers no {spec.op_type} version "
                         f"{spec.plugin_version} in namespace '{spec.plugin_namespace}'; rebuild it from plugins/")
