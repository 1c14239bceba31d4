"""Stage `checkpoint`: load and validate the checkpoint; its digest identifies every artifact."""

from __future__ import annotations

from onerank_export.pipeline.result import StageResult, Status
from onerank_export.pipeline.stages.base import Stage
from onerank_export.pipeline.state import MODEL, BuildState


class CheckpointStage(Stage):
    name = "checkpoint"
    provides = (MODEL,)
    critical = True  # nothing can be built without the model

    def run(self, state: BuildState) -> StageResult:
        from onerank_export.model.checkpoint import checkpoint_digest, load_checkpoint

        state.model = load_checkpoint(state.checkpoint)
        state.checkpoint_sha256 = checkpoint_digest(state.checkpoint)
        params = sum(p.numel() for p in state.model.parameters())
        cfg = state.config
        return StageResult(self.name, Status.OK,
                           f"{params / 1e6:.2f}M parameters, d={cfg.d_model}, {cfg.n_layers} layers, "
                           f"tasks {','.join(cfg.tasks)}, mask {cfg.mask_mode}",
                           metrics={"parameters": params, "sha256": state.checkpoint_sha256,
                                    "source": state.options.checkpoint_source})
