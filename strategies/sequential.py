"""One patch, trained on risk 1, then further trained on risk 2, ... (with or without replay)."""

from __future__ import annotations

from compose.replay import ReplayOptions
from compose.strategy import StagePlan, Strategy


class Sequential(Strategy):
    name = "sequential"
    description = "one shared patch trained on each risk in turn (no replay: the forgetting baseline)"

    def plan(self, ctx, index, name, previous):
        total = ctx.cfg.total_tokens
        model = previous.model if previous else ctx.new_patch(
            total, init_text=" ".join(ctx.risk(r).init_text for r in ctx.order))
        return StagePlan(name, model, ctx.shared_segments(total, ctx.order[:index + 1]), [name],
                         desc=f"stage {index + 1}/{len(ctx.order)} {name}")


class SequentialReplay(Sequential):
    name = "sequential-replay"
    description = "as sequential, mixing a replay buffer of earlier risks' data into each later stage"
    Options = ReplayOptions
