"""A strategy plugin: one short module and one registration line.

``cumulative`` trains one shared patch in stages, stage i on the union of the first i risks' data (joint
training of a growing subset of the risks), so each stage relearns the earlier risks with the new one instead of
replaying a share of them. The stage loop (``compose.strategy.Strategy.run``) does the rest: stage folders,
resuming, evaluation rows of the forgetting matrix, saving the final patch.

    compose --plugin experiments/examples/my_strategy.py run --strategy cumulative --risks tox,bias,harm
    compose --plugin experiments/examples/my_strategy.py strategies
"""

from __future__ import annotations

from compose.strategy import StagePlan, Strategy
from strategies import register_strategy


class Cumulative(Strategy):
    name = "cumulative"
    description = "one shared patch; stage i trains on the union of the first i risks' data"

    def plan(self, ctx, index, name, previous):
        total = ctx.cfg.total_tokens
        model = previous.model if previous else ctx.new_patch(
            total, init_text=" ".join(ctx.risk(r).init_text for r in ctx.order))
        subset = ctx.order[:index + 1]
        return StagePlan(name, model, ctx.shared_segments(total, subset), subset,
                         desc=f"stage {index + 1}/{len(ctx.order)}: {', '.join(subset)}")


register_strategy(Cumulative)
