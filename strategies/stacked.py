"""One block of virtual tokens per risk; earlier blocks stay frozen and stay in the prompt.

Layout: blocks in training order, the newest block last (next to the input). Earlier blocks therefore keep
their absolute positions when a block is added (Progressive Prompts puts the newest block first instead).
The DPO reference of a new block includes the frozen earlier blocks, so the new block is judged against what
is already deployed, not against the bare model: with ``dpo_reference: sft`` (the default) it is the whole
patch as the block's SFT left it, with ``base`` the base model with the earlier blocks only.
"""

from __future__ import annotations

import torch

from compose.patch import get_prompt, init_from_text, segments_for
from compose.replay import ReplayOptions
from compose.strategy import StagePlan, Strategy
from compose.train import Reference


class Stacked(Strategy):
    name = "stacked"
    description = "a new frozen-after-training block per risk, earlier blocks kept in the prompt (replay on)"
    Options = ReplayOptions

    def plan(self, ctx, index, name, previous):
        earlier = get_prompt(previous.model) if previous else None  # the frozen blocks so far (float32, rows x d)
        block = init_from_text(ctx.loaded.model, ctx.loaded.tokenizer, ctx.cfg.tokens[name], ctx.risk(name).init_text)
        weights = block if earlier is None else torch.cat([earlier, block])
        model = ctx.new_patch(weights.shape[0], init=weights)
        return StagePlan(name, model, segments_for([(r, ctx.cfg.tokens[r]) for r in ctx.order[:index + 1]]), [name],
                         reference=Reference(prefix=earlier),
                         frozen_rows=slice(0, 0 if earlier is None else earlier.shape[0]),
                         desc=f"stage {index + 1}/{len(ctx.order)} {name} (block {index + 1})")
