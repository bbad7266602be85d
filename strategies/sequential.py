"""One patch, trained on risk 1, then further trained on risk 2, ... (with or without replay)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from compose.errors import ComposeError
from compose.strategy import StagePlan, Strategy


@dataclass
class ReplayOptions:
    """Options of the strategies with replay (the run config's top-level ``replay``)."""

    section: ClassVar[str | None] = None
    replay: float = field(default=0.25, metadata={"help": "share of each later stage's data replayed from "
                                                          "earlier risks, in [0, 1) (0: no replay)"})

    def __post_init__(self):
        if isinstance(self.replay, bool) or not isinstance(self.replay, (int, float)) or not 0 <= self.replay < 1:
            raise ComposeError(f"replay share must be in [0, 1), got {self.replay}")
        self.replay = float(self.replay)


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
