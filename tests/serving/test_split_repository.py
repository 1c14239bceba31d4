"""Split mode's Triton repository for both targets: the client contract of the inline repository of the same
target (every model name a client uses, with the same inputs and outputs), the instance kinds (only the
lookup is KIND_CPU on a gpu target), the ensembles' wiring, the store never copied, TensorRT models only
where plans were given, and the refusals (a plan without the plugin library, a dense graph of other I/O
types). The ONNX Runtime backend models are opened as that backend opens them and fed looked-up rows."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from helpers import TINY, request

from onerank_export import spec
from onerank_export.embeddings.split import dense_feed
from onerank_export.embeddings.store import open_store, write_store
from onerank_export.errors import StageError
from onerank_export.export.ort_cpu_graph import write_ort_cpu_model
from onerank_export.model.checkpoint import save_checkpoint
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.serving import model_config as mcfg
from onerank_export.serving.backend_rules import check_repository
from onerank_export.serving.ort_backend import session_like_onnxruntime_backend
from onerank_export.serving.parameters import EMBEDDING_STORE_PARAMETER, PLUGIN_PARAMETER
from onerank_export.serving.profiles import Target, serving_plan
from onerank_export.serving.repository import SplitModels, write_model_repository
from onerank_export.serving.split_repository import write_split_repository

PLANS = {Target.CPU: serving_plan(Target.CPU, "tests", "throughput"),
         Target.GPU: serving_plan(Target.GPU, "tests", "throughput")}
KIND = mcfg.mc.ModelInstanceGroup.Kind.Name


@pytest.fixture(scope="module")
def build(tiny_dense_onnx, tmp_path_factory):
    """A split build's inputs: the store, the dense ONNX as fp32 and fp16 (the same graph under the second
    name: the writer takes precisions from its caller), two fake plans and a plugin library."""
    model, dense = tiny_dense_onnx
    root = tmp_path_factory.mktemp("split-build")
    (root / "onnx").mkdir()
    files = {p: shutil.copyfile(dense, root / "onnx" / f"onerank.dense.{p}.onnx") for p in ("fp32", "fp16")}
    write_store(save_checkpoint(model, root / "ckpt"), root / "embeddings", "fp32")
    (root / "engines").mkdir()
    plans = {p: root / "engines" / f"onerank.dense.{p}.plan" for p in ("fp32", "fp16")}
    for plan in plans.values():
        plan.write_bytes(b"not a real plan")
    (root / "plugins").mkdir()
    (root / "plugins" / "libonerank_plugins.so").write_bytes(b"plugin")
    return model, root, files, plans


def write(build, tmp_path, target, engines=None, plugin=True):
    _, root, files, _ = build
    out = tmp_path / "out"
    shutil.copytree(root, out)
    split = SplitModels(out / "onnx" / "onerank.dense.fp32.onnx", out / "embeddings")
    dense = {p: out / "onnx" / path.name for p, path in files.items()}
    engines = {p: out / "engines" / path.name for p, path in (engines or {}).items()}
    lib = out / "plugins" / "libonerank_plugins.so" if plugin else None
    return write_split_repository(out, TINY, PLANS[target], split, dense, engines, lib), out


def configs(repo_dir):
    return {p.parent.name: mcfg.read_config(p) for p in sorted(repo_dir.glob("*/config.pbtxt"))}


def io_of(cfg):
    return ([(t.name, t.data_type, list(t.dims)) for t in cfg.input],
            [(t.name, t.data_type, list(t.dims)) for t in cfg.output], cfg.max_batch_size)


def kinds(cfg):
    return {KIND(g.kind) for g in cfg.instance_group}


def inline_client_models(tmp_path, tiny_fp32_onnx, target):
    """The inline repository of the same target: the names a client calls and their configs."""
    out = tmp_path / "inline"
    onnx_files = {"fp32": tiny_fp32_onnx[1], "fp16": tiny_fp32_onnx[1]}
    cpu = {p: write_ort_cpu_model(f, out / f"cpu.{p}.onnx") for p, f in onnx_files.items()}
    engines, lib = {}, None
    if target is Target.GPU:
        lib = out / "plugins" / "lib.so"
        lib.parent.mkdir(parents=True)
        lib.write_bytes(b"plugin")
        engines = {"fp32": lib}  # any file: only the config is compared
    repo = write_model_repository(out, TINY, PLANS[target], onnx_files, engines, lib, cpu_onnx=cpu)
    return configs(repo.path)


@pytest.mark.parametrize("target", [Target.CPU, Target.GPU])
def test_every_model_a_client_of_the_inline_repository_uses_exists_with_the_same_contract(
        build, tiny_fp32_onnx, tmp_path, target):
    repo, _ = write(build, tmp_path, target, engines={"fp32": build[3]["fp32"]})
    split = configs(repo.path)
    inline = inline_client_models(tmp_path, tiny_fp32_onnx, target)
    assert set(inline) <= set(split), sorted(set(inline) - set(split))
    for name, cfg in inline.items():
        assert split[name].platform == "ensemble", name
        assert io_of(split[name]) == io_of(cfg), name
        assert split[name].parameters["onerank.config"] == cfg.parameters["onerank.config"], name
        assert split[name].parameters["onerank.precision"] == cfg.parameters["onerank.precision"], name
    assert check_repository(repo.path, target.value) == []


def test_cpu_target_models_kinds_and_plans_not_served(build, tmp_path):
    repo, _ = write(build, tmp_path, Target.CPU, engines=build[3])  # plans given: a cpu target serves none
    cfgs = configs(repo.path)
    assert sorted(cfgs) == ["onerank", "onerank_dense", "onerank_dense_onnx_fp16", "onerank_dense_onnx_fp32",
                            "onerank_lookup", "onerank_onnx_fp16", "onerank_onnx_fp32"]
    assert sorted(repo.models) == sorted(cfgs) and repo.python_model == "onerank" and repo.tensorrt_models == 0
    served = ("onerank_dense", "onerank_dense_onnx_fp16", "onerank_dense_onnx_fp32", "onerank_lookup")
    assert {name: kinds(c) for name, c in cfgs.items() if c.platform != "ensemble"} == {n: {"KIND_CPU"} for n in served}
    steps = {name: [s.model_name for s in c.ensemble_scheduling.step] for name, c in cfgs.items()
             if c.platform == "ensemble"}
    assert steps == {"onerank": ["onerank_lookup", "onerank_dense"],
                     "onerank_onnx_fp16": ["onerank_lookup", "onerank_dense_onnx_fp16"],
                     "onerank_onnx_fp32": ["onerank_lookup", "onerank_dense_onnx_fp32"]}
    assert cfgs["onerank_onnx_fp16"].parameters["onerank.precision"].string_value == "fp16"
    assert not list(repo.path.rglob("*.plan")) and "onerank_onnx_fp16" in (repo.path / "README.md").read_text()


def test_gpu_target_lookup_on_the_cpu_dense_models_on_the_gpu_trt_only_where_plans_exist(build, tmp_path):
    repo, out = write(build, tmp_path, Target.GPU, engines={"fp32": build[3]["fp32"]})
    cfgs = configs(repo.path)
    assert sorted(cfgs) == ["onerank_dense_onnx_fp16", "onerank_dense_onnx_fp32", "onerank_dense_trt_fp32",
                            "onerank_lookup", "onerank_onnx_fp16", "onerank_onnx_fp32", "onerank_trt_fp32"]
    assert repo.python_model is None and repo.tensorrt_models == 1
    assert {name: kinds(c) for name, c in cfgs.items() if c.platform != "ensemble"} == {
        "onerank_lookup": {"KIND_CPU"}, "onerank_dense_onnx_fp16": {"KIND_GPU"},
        "onerank_dense_onnx_fp32": {"KIND_GPU"}, "onerank_dense_trt_fp32": {"KIND_GPU"}}
    trt = cfgs["onerank_dense_trt_fp32"]
    assert trt.platform == "tensorrt_plan" and trt.parameters[PLUGIN_PARAMETER].string_value == \
        "plugins/libonerank_plugins.so"
    assert trt.parameters[PLUGIN_PARAMETER + ".sha256"].string_value  # the library's, as the inline trt models
    assert (repo.path / "onerank_dense_trt_fp32" / "1" / "model.plan").read_bytes() == b"not a real plan"
    assert [s.model_name for s in cfgs["onerank_trt_fp32"].ensemble_scheduling.step] == \
        ["onerank_lookup", "onerank_dense_trt_fp32"]
    # the gpu ONNX models serve the file as exported (no CPU rewrite)
    assert (repo.path / "onerank_dense_onnx_fp32" / "1" / "model.onnx").read_bytes() == \
        (out / "onnx" / "onerank.dense.fp32.onnx").read_bytes()
    readme = (repo.path / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=$PWD/plugins/libonerank_plugins.so" in readme
    assert "--load-model onerank_lookup --load-model onerank_dense_trt_fp32 \\\n        --load-model onerank_trt_fp32" \
        in readme
    assert check_repository(repo.path, "gpu") == []  # the ensemble rules included (ensemble_rules.py)


@pytest.mark.parametrize("target", [Target.CPU, Target.GPU])
def test_the_store_is_never_copied_and_the_lookup_points_at_it(build, tmp_path, target):
    repo, out = write(build, tmp_path, target, engines=build[3])
    store_files = {p.name for p in (out / "embeddings").iterdir()}
    assert not [p for p in repo.path.rglob("*") if p.name in store_files]
    lookup = repo.path / "onerank_lookup"
    where = configs(repo.path)["onerank_lookup"].parameters[EMBEDDING_STORE_PARAMETER].string_value
    assert where == "../../embeddings" and os.path.realpath(lookup / where) == os.path.realpath(out / "embeddings")


def test_negative_controls_the_backend_rule_and_the_ensemble_rules_catch_a_broken_repository(build, tmp_path):
    repo, _ = write(build, tmp_path, Target.GPU, engines={"fp32": build[3]["fp32"]})
    cfgs = configs(repo.path)

    def broken(name, change):
        """check_repository's lines after `change` to one model's config (restored afterwards)."""
        path = repo.path / name / "config.pbtxt"
        before = path.read_text()
        cfg = mcfg.read_config(path)
        change(cfg)
        path.write_text(mcfg.to_text(cfg))
        try:
            return check_repository(repo.path, "gpu")
        finally:
            path.write_text(before)

    def kind_gpu(cfg):  # a python model on the GPU: refused
        cfg.instance_group[0].kind = mcfg.mc.ModelInstanceGroup.KIND_GPU

    assert any(p.startswith("onerank_lookup: [instance-kind]") for p in broken("onerank_lookup", kind_gpu))

    def wider(cfg):  # cand_item_rows of another width than the lookup gives
        cfg.input[-1].dims[-1] = TINY.d_model + 1

    assert broken("onerank_dense_trt_fp32", wider) == [
        "onerank_trt_fp32: [ensemble] 'cand_item_rows' TYPE_FP32 [-1, 16] feeds 'onerank_dense_trt_fp32' input "
        "'cand_item_rows' TYPE_FP32 [-1, 17]; fix: give both the same data type and dims"]

    def small_batch(cfg):  # Triton: "ensemble X allows maximum batch size 8, but it contains model ..."
        cfg.max_batch_size = 1

    assert broken("onerank_lookup", small_batch) == [
        f"{name}: [ensemble] max_batch_size {cfgs[name].max_batch_size}, but step 'onerank_lookup' allows only 1; "
        "fix: give the ensemble at most its steps' max_batch_size"
        for name in ("onerank_onnx_fp16", "onerank_onnx_fp32", "onerank_trt_fp32")]

    def unmapped(cfg):
        del cfg.ensemble_scheduling.step[1].input_map["hist_item_rows"]

    assert broken("onerank_trt_fp32", unmapped) == [
        "onerank_trt_fp32: [ensemble] input 'hist_item_rows' of step 'onerank_dense_trt_fp32' is not mapped; "
        "fix: map every input of the step"]

    def no_output(cfg):
        cfg.ensemble_scheduling.step[1].output_map.clear()

    assert broken("onerank_trt_fp32", no_output) == [
        "onerank_trt_fp32: [ensemble] output 'scores' is produced by no step; fix: map a step output to it"]
    assert check_repository(repo.path, "gpu") == []  # restored: clean again


def test_refusals_before_anything_is_written(build, tmp_path, tiny_fp32_onnx):
    inline_onnx = tiny_fp32_onnx[1]
    with pytest.raises(StageError) as err:
        write(build, tmp_path, Target.GPU, engines={"fp32": build[3]["fp32"]}, plugin=False)
    assert str(err.value) == ("dense engine onerank.dense.fp32.plan needs the plugin library, none was given; build "
                              "the engines with the engine stage (it builds the plugin) or pass --plugin")
    assert not (tmp_path / "out" / "model_repository").exists()
    _, root, files, plans = build
    out = tmp_path / "int8"
    shutil.copytree(root, out)
    split = SplitModels(out / "onnx" / "onerank.dense.fp32.onnx", out / "embeddings")
    lib = out / "plugins" / "libonerank_plugins.so"
    with pytest.raises(StageError, match="dense engine of precision int8 has no dense ONNX of that precision"):
        write_split_repository(out, TINY, PLANS[Target.GPU], split, files, {"int8": plans["fp32"]}, lib)
    with pytest.raises(StageError, match="no fp32 dense ONNX to serve"):
        write_split_repository(out, TINY, PLANS[Target.GPU], split, {"fp16": files["fp16"]}, {}, lib)
    half_rows = onnx.load(str(files["fp16"]))  # a dense graph taking float16 rows cannot sit behind the lookup
    next(i for i in half_rows.graph.input if i.name == "hist_item_rows").type.tensor_type.elem_type = \
        onnx.TensorProto.FLOAT16
    onnx.save(half_rows, str(out / "half.onnx"))
    with pytest.raises(StageError) as err:
        write_split_repository(out, TINY, PLANS[Target.CPU], split, {"fp32": files["fp32"], "fp16": out / "half.onnx"})
    assert str(err.value) == ("half.onnx (fp16): 'hist_item_rows' is float16, the ensemble passes float32; export "
                              "the fp16 dense graph with the contract's I/O types")
    with pytest.raises(StageError) as err:  # the inline graph (no row inputs) behind the lookup: refused by name
        write_split_repository(out, TINY, PLANS[Target.CPU], split, {"fp32": files["fp32"], "fp16": inline_onnx})
    assert str(err.value) == (f"{inline_onnx.name} (fp16): no 'cand_item_rows' tensor, so it is not the split dense "
                              "graph the ensemble feeds; give the build's onerank.dense.<p>.onnx")
    outside = tmp_path / "elsewhere.so"  # a plugin library the plan configs cannot name relative to the build
    outside.write_bytes(b"lib")
    with pytest.raises(StageError, match="is outside the build directory"):
        write_split_repository(out, TINY, PLANS[Target.GPU], split, files, {"fp32": plans["fp32"]}, outside)
    assert not (out / "model_repository").exists()


@pytest.mark.parametrize("target", [Target.CPU, Target.GPU])
def test_the_onnxruntime_backend_dense_models_load_and_score_looked_up_rows_like_eager(build, tmp_path, target):
    model = build[0]
    repo, out = write(build, tmp_path, target)
    table = open_store(out / "embeddings").table("item", rows=TINY.item_vocab_size, dim=TINY.d_model)
    eager = EagerDenseRunner(model)
    eager.activate()
    feed = request(TINY, 3, 9, 6, seed=4)
    want = eager.infer_impl(feed)["scores"]
    for precision in ("fp32", "fp16"):
        # a gpu model opened on the CPU provider: the file, the config's I/O check and options; not the GPU
        session, applied = session_like_onnxruntime_backend(repo.path / f"onerank_dense_onnx_{precision}")
        scores = session.run(list(spec.OUTPUT_NAMES), dense_feed(table, feed), applied.run_options())[0]
        np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)
        if target is Target.CPU:
            assert (applied.intra_op_num_threads, applied.inter_op_num_threads) == (PLANS[target].threads, 1)


def test_the_triton_stage_serves_every_dense_precision_and_the_engine_stage_plans(build, tmp_path):
    from onerank_export.pipeline.options import BuildOptions
    from onerank_export.pipeline.stages.triton import TritonStage
    from onerank_export.pipeline.state import BuildState
    from onerank_export.precision import Precision

    _, root, _, _ = build
    out = tmp_path / "work"
    shutil.copytree(root, out)
    state = BuildState(BuildOptions(out=tmp_path / "b", embeddings="split"), out / "ckpt", out,
                       split=SplitModels(out / "onnx" / "onerank.dense.fp32.onnx", out / "embeddings"),
                       split_variants={Precision.FP16: out / "onnx" / "onerank.dense.fp16.onnx"},
                       split_engines={Precision.FP16: out / "engines" / "onerank.dense.fp16.plan"},
                       plugin_library=out / "plugins" / "libonerank_plugins.so")
    state.model = build[0]
    gpu = TritonStage(PLANS[Target.GPU]).run(state)
    assert gpu.status.value == "ok", gpu.detail
    assert gpu.detail.startswith("model_repository/ target gpu, split mode: ensembles onerank_onnx_fp16, "
                                 "onerank_onnx_fp32, onerank_trt_fp16 (onerank_lookup -> a dense model)")
    assert "triton_onerank_dense_trt_fp16_model" in gpu.artifacts
    shutil.rmtree(out / "model_repository")
    cpu = TritonStage(PLANS[Target.CPU]).run(state)
    assert cpu.status.value == "ok" and cpu.detail.endswith(
        "; 1 dense TensorRT engine(s) built but not served (target cpu)"), cpu.detail


def test_the_gpu_readme_loads_models_that_exist(build, tmp_path):
    """Without plans the launch command names the ONNX Runtime ensemble and its step (an explicit-mode start
    fails on a model name that is not in the repository)."""
    import re

    for engines, expected in (({"fp32": build[3]["fp32"]}, "onerank_trt_fp32"), ({}, "onerank_onnx_fp32")):
        repo, _ = write(build, tmp_path / (expected or "none"), Target.GPU, engines=engines)
        loaded = re.findall(r"--load-model (\S+)", (repo.path / "README.md").read_text())
        assert loaded[-1] == expected and len(loaded) == 3
        assert all((repo.path / name / "config.pbtxt").is_file() for name in loaded), loaded
