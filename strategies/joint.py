"""One patch trained on all risks at once: the multi-task reference the other strategies are judged against."""

from __future__ import annotations

from strategies.base import Strategy


class Joint(Strategy):
    name = "joint"
    layout = "composed"
    description = "one patch trained on the union of all risks' data (multi-task reference)"

    def run(self, ctx):
        total = ctx.cfg.total_tokens
        model = ctx.new_patch(total, init_text=" ".join(ctx.risk(r).init_text for r in ctx.order))
        segments = ctx.shared_segments(total, ctx.order)
        stage = ctx.stage(1, "joint")
        if not stage.restore(model, kind="composed", trained=None):
            sft = [e for r in ctx.order for e in ctx.data(r).sft]
            pairs = [p for r in ctx.order for p in ctx.data(r).pairs]
            training = ctx.train(model, sft, pairs, desc="joint training on " + ", ".join(ctx.order))
            stage.finish(model, segments, training, kind="composed", trained=None)
        return model, segments
