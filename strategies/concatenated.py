"""Specialists trained independently from the base model, concatenated at inference (run order, first first)."""

from __future__ import annotations

import torch

from compose.patch import segments_for
from compose.strategy import Composition, Strategy


class Concatenated(Strategy):
    name = "concatenated"
    layout = "composed"
    description = "independent specialists (reused when already built) concatenated into one patch"

    def stages(self, ctx):
        return []

    def compose(self, ctx, last):
        prompts = [ctx.specialist(risk) for risk in ctx.order]
        model = ctx.new_patch(sum(p.shape[0] for p in prompts), init=torch.cat(prompts))
        segments = segments_for([(r, p.shape[0]) for r, p in zip(ctx.order, prompts)])
        return Composition(model, segments, {"composition": "concatenation in run order"})
