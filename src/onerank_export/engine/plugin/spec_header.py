"""Render the plugin's C++ spec header from `MATCHING_SCORE` (export/custom_op.py), the one definition.

    python -m onerank_export.engine.plugin.spec_header            # rewrite the committed header
    python -m onerank_export.engine.plugin.spec_header --check    # exit 1 if it is stale

The TensorRT plugin takes its name, namespace, version, field names, tensor positions, ranks,
accepted element types and the output-shape rule from this header, never from literals;
tests/engine/plugin/test_plugin_spec.py checks the committed file equals `render_header()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onerank_export.export.custom_op import MATCHING_SCORE, CustomOpSpec

PLUGIN_DIR = Path(__file__).resolve().parents[4] / "plugins" / "matching_score"
SPEC_HEADER = PLUGIN_DIR / "generated" / "matchingScoreSpec.h"

# ONNX attribute type -> the TensorRT PluginFieldType the ONNX parser passes it as (onnx-tensorrt loadFields).
FIELD_TYPES = {"float": "kFLOAT32", "string": "kCHAR"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _dims_in(axes: tuple[str, ...], reference: tuple[str, ...]) -> list[int]:
    """For each axis, its position in `reference` (the output shape and input checks derive from r)."""
    return [reference.index(a) for a in axes]


def render_header(spec: CustomOpSpec = MATCHING_SCORE) -> str:
    z, r, valid = spec.inputs
    (scores,) = spec.outputs
    lines = [
        "// Generated from MATCHING_SCORE in src/onerank_export/export/custom_op.py by",
        "// `python -m onerank_export.engine.plugin.spec_header`. Do not edit: tests/engine/plugin/test_plugin_spec.py",
        "// fails when this file differs from what that renders.",
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        "namespace onerank",
        "{",
        "namespace spec",
        "{",
        "",
        f'constexpr char const* kOnnxDomain = "{spec.domain}";',
        f"constexpr int32_t kOnnxDomainVersion = {spec.version};",
        f'constexpr char const* kPluginName = "{spec.op_type}";',
        f'constexpr char const* kPluginVersion = "{spec.plugin_version}";',
        f'constexpr char const* kPluginNamespace = "{spec.plugin_namespace}";',
        "",
        "// Plugin fields = the ONNX node's attributes except plugin_version (read by the parser's creator",
        "// lookup), with the PluginFieldType the ONNX parser passes.",
    ]
    element_types = list(dict.fromkeys(x for t in (*spec.inputs, *spec.outputs) for x in t.types))
    fields = [(n, "float") for n in spec.float_attributes] + [(n, "string") for n in spec.string_attributes]
    for name, kind in fields:
        lines.append(f'constexpr char const* kField{_camel(name)} = "{name}"; // {kind} -> PluginFieldType::'
                     f"{FIELD_TYPES[kind]}")
    lines += [
        f"constexpr int32_t kNbFields = {len(fields)};",
        "",
        "enum class ElementType : int32_t",
        "{",
        *[f"    k{t} = {i}," for i, t in enumerate(element_types)],
        "};",
        "",
        f"constexpr int32_t kNbInputs = {len(spec.inputs)};",
        f"constexpr int32_t kNbOutputs = {len(spec.outputs)};",
    ]
    for i, t in enumerate(spec.inputs):
        lines.append(f"constexpr int32_t kInput{_camel(t.name)} = {i};")
    for i, t in enumerate(spec.outputs):
        lines.append(f"constexpr int32_t kOutput{_camel(t.name)} = {i};")
    for t in (*spec.inputs, *spec.outputs):
        cname = _camel(t.name)
        lines.append(f"constexpr int32_t kRank{cname} = {len(t.axes)}; // [{', '.join(t.axes)}]")
        lines.append(f"constexpr int32_t kNbTypes{cname} = {len(t.types)};")
        lines.append(f"constexpr ElementType kTypes{cname}[kNbTypes{cname}] = {{"
                     + ", ".join(f"ElementType::k{x}" for x in t.types) + "};")
    lines += [
        "",
        f"// Every axis of {z.name}, {valid.name} and {scores.name} is an axis of {r.name}: its position there.",
        f"// The output shape is read from {r.name}; {z.name} and {valid.name} must agree with it.",
        *[f"constexpr int32_t k{_camel(axis)}DimInR = {i};" for i, axis in enumerate(r.axes)],
    ]
    for t in (z, valid, scores):
        dims = _dims_in(t.axes, r.axes)
        lines.append(f"constexpr int32_t k{_camel(t.name)}DimsInR[kRank{_camel(t.name)}] = {{"
                     + ", ".join(map(str, dims)) + "};")
    lines += ["", "} // namespace spec", "} // namespace onerank", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onerank_export.engine.plugin.spec_header")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed header is stale")
    args = parser.parse_args(argv)
    text = render_header()
    if args.check:
        current = SPEC_HEADER.read_text() if SPEC_HEADER.exists() else ""
        if current != text:
            print(f"{SPEC_HEADER} is stale: run python -m onerank_export.engine.plugin.spec_header", file=sys.stderr)
            return 1
        return 0
    SPEC_HEADER.parent.mkdir(parents=True, exist_ok=True)
    SPEC_HEADER.write_text(text)
    print(SPEC_HEADER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
