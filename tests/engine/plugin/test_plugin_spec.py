"""One spec, not two copies: the plugin's C++ constants, the ONNX node and MATCHING_SCORE agree."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import onnx
import pytest

from onerank_export.engine.plugin import spec_header as plugin_spec
from onerank_export.export.custom_op import MATCHING_SCORE, PLUGIN_VERSION_ATTRIBUTE

PLUGIN_DIR = Path(__file__).resolve().parents[3] / "plugins" / "matching_score"
# The kernel launcher (matchingScoreKernel.*) names the Triton kernel's parameters ("scale", ...), which come
# from the generated kernel header, not the op's attributes; every other source must use spec:: constants.
PLUGIN_SOURCES = sorted(p for p in PLUGIN_DIR.glob("*.*")
                        if p.suffix in (".cpp", ".h") and not p.stem.startswith("matchingScoreKernel"))
ONNX_ATTRIBUTE_TYPE = {"float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}


def header_constants(text: str) -> dict[str, str | int]:
    """`constexpr` scalars of the committed header: strings and ints by name."""
    values: dict[str, str | int] = dict(re.findall(r'constexpr char const\* (\w+) = "([^"]*)";', text))
    values.update({k: int(v) for k, v in re.findall(r"constexpr int32_t (\w+) = (-?\d+);", text)})
    return values


def header_type_list(text: str, tensor: str) -> list[str]:
    body = re.search(rf"kTypes{tensor}\[kNbTypes{tensor}\] = \{{(.*?)\}};", text).group(1)
    return re.findall(r"ElementType::k(\w+)", body)


@pytest.fixture(scope="module")
def header():
    return header_constants(plugin_spec.SPEC_HEADER.read_text())


@pytest.fixture(scope="module")
def exported_node(tiny_fp32_onnx):
    proto = onnx.load(str(tiny_fp32_onnx[1]))
    (node,) = [n for n in proto.graph.node if n.domain == MATCHING_SCORE.domain]
    return proto, node


def test_committed_header_is_what_the_spec_renders():
    assert plugin_spec.SPEC_HEADER.read_text() == plugin_spec.render_header(), (
        "generated/matchingScoreSpec.h is stale: run python -m onerank_export.engine.plugin.spec_header")
    assert plugin_spec.main(["--check"]) == 0


def test_the_header_follows_the_spec():
    """A changed spec renders a different header (so the staleness check above can fail)."""
    changed = dataclasses.replace(MATCHING_SCORE, plugin_namespace="other", float_attributes=("scale", "bias"))
    text = plugin_spec.render_header(changed)
    assert text != plugin_spec.render_header()
    values = header_constants(text)
    assert values["kPluginNamespace"] == "other" and values["kFieldBias"] == "bias" and values["kNbFields"] == 3


def test_header_constants_match_the_spec(header):
    spec = MATCHING_SCORE
    assert header["kOnnxDomain"] == spec.domain and header["kOnnxDomainVersion"] == spec.version
    assert header["kPluginName"] == spec.op_type
    assert header["kPluginVersion"] == spec.plugin_version
    assert header["kPluginNamespace"] == spec.plugin_namespace
    assert header["kFieldScale"] == "scale" and header["kFieldPluginNamespace"] == "plugin_namespace"
    assert header["kNbInputs"] == len(spec.inputs) and header["kNbOutputs"] == len(spec.outputs)
    text = plugin_spec.SPEC_HEADER.read_text()
    for tensor in (*spec.inputs, *spec.outputs):
        name = tensor.name.capitalize()
        assert header[f"kRank{name}"] == len(tensor.axes)
        assert header_type_list(text, name) == list(tensor.types)


def string_literals(source: str) -> list[str]:
    source = re.sub(r"//[^\n]*", "", source)  # comments may name things
    return re.findall(r'"((?:[^"\\]|\\.)*)"', source)


def test_plugin_sources_use_the_generated_constants_not_literals(header):
    spec_strings = {header[k] for k in ("kOnnxDomain", "kPluginName", "kPluginVersion", "kPluginNamespace",
                                        "kFieldScale", "kFieldPluginNamespace")}
    assert PLUGIN_SOURCES, PLUGIN_DIR
    for path in PLUGIN_SOURCES:
        literals = set(string_literals(path.read_text()))
        assert not literals & spec_strings, f"{path.name} spells {literals & spec_strings} instead of spec::k*"
    plugin = (PLUGIN_DIR / "matchingScorePlugin.cpp").read_text()
    creator = (PLUGIN_DIR / "matchingScorePluginCreator.cpp").read_text()
    for constant in ("kPluginName", "kPluginVersion", "kPluginNamespace", "kFieldScale", "kScoresDimsInR",
                     "kTypesScores"):
        assert f"spec::{constant}" in plugin, constant
    for constant in ("kPluginName", "kPluginVersion", "kPluginNamespace", "kFieldScale", "kFieldPluginNamespace"):
        assert f"spec::{constant}" in creator, constant
    # The creator advertises each field with the type the ONNX parser passes for the attribute's type.
    assert re.search(r"PluginField\(spec::kFieldScale, nullptr, PluginFieldType::kFLOAT32, 1\)", creator)
    assert re.search(r"PluginField\(spec::kFieldPluginNamespace, nullptr, PluginFieldType::kCHAR, 0\)", creator)
    registration = (PLUGIN_DIR / "pluginRegistration.cpp").read_text()
    assert "registerCreator(creator(), spec::kPluginNamespace)" in registration


def test_onnx_node_has_exactly_the_plugins_attributes(exported_node, header):
    proto, node = exported_node
    assert node.domain == header["kOnnxDomain"] and node.op_type == header["kPluginName"]
    assert {o.domain: o.version for o in proto.opset_import}[node.domain] == header["kOnnxDomainVersion"]
    attributes = {a.name: a for a in node.attribute}
    expected_types = {**{n: "float" for n in MATCHING_SCORE.float_attributes},
                      **{n: "string" for n in MATCHING_SCORE.string_attributes}}
    # The plugin's fields, and plugin_version, which only the parser's creator lookup reads.
    assert set(expected_types) == {header["kFieldScale"], header["kFieldPluginNamespace"]}
    assert set(attributes) == {*expected_types, PLUGIN_VERSION_ATTRIBUTE}
    for name, kind in expected_types.items():
        assert attributes[name].type == ONNX_ATTRIBUTE_TYPE[kind], name
        assert f'kField{plugin_spec._camel(name)} = "{name}"; // {kind} -> PluginFieldType::' \
               f"{plugin_spec.FIELD_TYPES[kind]}" in plugin_spec.SPEC_HEADER.read_text()
    assert attributes["plugin_namespace"].s.decode() == header["kPluginNamespace"]
    # onnx-tensorrt looks the creator up by this attribute, and by "1" when it is absent: version 2
    # (int32 mask) must be said, so that a stale version-1 library (BOOL mask) is not matched.
    version = attributes[PLUGIN_VERSION_ATTRIBUTE]
    assert version.type == onnx.AttributeProto.STRING and version.s.decode() == header["kPluginVersion"] == "2"
    assert {o.domain: o.version for o in proto.opset_import}[node.domain] == int(header["kPluginVersion"])
    assert len(node.input) == header["kNbInputs"] and len(node.output) == header["kNbOutputs"]


def test_onnx_tensor_types_are_in_the_plugins_type_lists(exported_node):
    proto, node = exported_node
    types = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.value_info, *proto.graph.output)}
    text = plugin_spec.SPEC_HEADER.read_text()
    names = {"Z": node.input[0], "R": node.input[1], "Valid": node.input[2], "Scores": node.output[0]}
    for tensor, value in names.items():
        onnx_type = onnx.TensorProto.DataType.Name(types[value])
        assert onnx_type in header_type_list(text, tensor), (tensor, onnx_type)
