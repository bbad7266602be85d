"""One block of virtual tokens per risk, all trained at once, each example with a random subset of the blocks
active (after MOSAIC, Peng et al. 2026, "Composable Safety Alignment with Modular Control Tokens").

Blocks trained apart and put side by side (``concatenated``) meet for the first time at inference, and each one
can undo the others. Here every SFT example sees its own risk's block beside a random number of the others (a
retain example: any number of blocks), the inactive blocks masked out of its attention; the whole patch is one
draw in as many as there are risks. DPO then trains the whole patch. ``activation: all`` keeps every block active
for every example: the same blocks trained jointly, the comparison that shows what the subsets add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from compose.errors import ComposeError
from compose.patch import init_from_text, segments_for
from compose.strategy import StagePlan, Strategy

ACTIVATIONS = ("subsets", "all")


@dataclass
class ModularOptions:
    """The option of the modular strategy (the run config's top-level ``activation``)."""

    section: ClassVar[str | None] = None
    activation: str = field(default="subsets", metadata={
        "help": "which blocks an SFT example trains with: subsets (its own risk's and a random number of the "
                "others, MOSAIC's order-based sampling) or all (every block, always)"})

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ComposeError(f"unknown activation '{self.activation}' of strategy 'modular'; valid: "
                               f"{', '.join(ACTIVATIONS)}")


class Modular(Strategy):
    name = "modular"
    layout = "composed"
    description = "one block per risk, trained together, each example with a random subset of the blocks active"
    Options = ModularOptions

    def stages(self, ctx):
        return ["modular"]

    def plan(self, ctx, index, name, previous):
        base, tok = ctx.loaded.model, ctx.loaded.tokenizer
        blocks = [init_from_text(base, tok, ctx.cfg.tokens[r], ctx.risk(r).init_text) for r in ctx.order]
        segments = segments_for([(r, ctx.cfg.tokens[r]) for r in ctx.order])
        subsets = segments if self.options.activation == "subsets" else None
        return StagePlan(name, ctx.new_patch(sum(b.shape[0] for b in blocks), init=torch.cat(blocks)), segments,
                         list(ctx.order), kind="composed", trained=None, subsets=subsets,
                         desc=f"modular training on {', '.join(ctx.order)} ({self.options.activation} of the blocks)")
