"""One patch trained on all risks at once: the multi-task reference the other strategies are judged against."""

from __future__ import annotations

from compose.strategy import StagePlan, Strategy


class Joint(Strategy):
    name = "joint"
    layout = "composed"
    description = "one patch trained on the union of all risks' data (multi-task reference)"

    def stages(self, ctx):
        return ["joint"]

    def plan(self, ctx, index, name, previous):
        total = ctx.cfg.total_tokens
        model = ctx.new_patch(total, init_text=" ".join(ctx.risk(r).init_text for r in ctx.order))
        return StagePlan(name, model, ctx.shared_segments(total, ctx.order), list(ctx.order), kind="composed",
                         trained=None, desc="joint training on " + ", ".join(ctx.order))
