// Generated from MATCHING_SCORE in src/onerank_export/export/custom_op.py by
// `python -m onerank_export.engine.plugin.spec_header`. Do not edit: tests/engine/plugin/test_plugin_spec.py
// fails when this file differs from what that renders.
#pragma once

#include <cstdint>

namespace onerank
{
namespace spec
{

constexpr char const* kOnnxDomain = "onerank";
constexpr int32_t kOnnxDomainVersion = 2;
constexpr char const* kPluginName = "MatchingScore";
constexpr char const* kPluginVersion = "2";
constexpr char const* kPluginNamespace = "onerank";

// Plugin fields = the ONNX node's attributes except plugin_version (read by the parser's creator
// lookup), with the PluginFieldType the ONNX parser passes.
constexpr char const* kFieldScale = "scale"; // float -> PluginFieldType::kFLOAT32
constexpr char const* kFieldPluginNamespace = "plugin_namespace"; // string -> PluginFieldType::kCHAR
constexpr int32_t kNbFields = 2;

enum class ElementType : int32_t
{
    kFLOAT = 0,
    kFLOAT16 = 1,
    kINT32 = 2,
};

constexpr int32_t kNbInputs = 3;
constexpr int32_t kNbOutputs = 1;
constexpr int32_t kInputZ = 0;
constexpr int32_t kInputR = 1;
constexpr int32_t kInputValid = 2;
constexpr int32_t kOutputScores = 0;
constexpr int32_t kRankZ = 3; // [batch, num_tasks, d_model]
constexpr int32_t kNbTypesZ = 2;
constexpr ElementType kTypesZ[kNbTypesZ] = {ElementType::kFLOAT, ElementType::kFLOAT16};
constexpr int32_t kRankR = 4; // [batch, num_candidates, num_tasks, d_model]
constexpr int32_t kNbTypesR = 2;
constexpr ElementType kTypesR[kNbTypesR] = {ElementType::kFLOAT, ElementType::kFLOAT16};
constexpr int32_t kRankValid = 2; // [batch, num_candidates]
constexpr int32_t kNbTypesValid = 1;
constexpr ElementType kTypesValid[kNbTypesValid] = {ElementType::kINT32};
constexpr int32_t kRankScores = 3; // [batch, num_candidates, num_tasks]
constexpr int32_t kNbTypesScores = 1;
constexpr ElementType kTypesScores[kNbTypesScores] = {ElementType::kFLOAT};

// Every axis of z, valid and scores is an axis of r: its position there.
// The output shape is read from r; z and valid must agree with it.
constexpr int32_t kBatchDimInR = 0;
constexpr int32_t kNumCandidatesDimInR = 1;
constexpr int32_t kNumTasksDimInR = 2;
constexpr int32_t kDModelDimInR = 3;
constexpr int32_t kZDimsInR[kRankZ] = {0, 2, 3};
constexpr int32_t kValidDimsInR[kRankValid] = {0, 1};
constexpr int32_t kScoresDimsInR[kRankScores] = {0, 1, 2};

} // namespace spec
} // namespace onerank
