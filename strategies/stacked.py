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
from compose.replay import ReplayBuffer
from compose.train import Reference
from strategies.base import Strategy


class Stacked(Strategy):
    name = "stacked"
    description = "a new frozen-after-training block per risk, earlier blocks kept in the prompt (replay on)"
    settings = ("replay",)

    def run(self, ctx):
        base, tok = ctx.loaded.model, ctx.loaded.tokenizer
        buffer = ReplayBuffer()
        earlier = None  # the frozen blocks trained so far (float32, rows x d)
        model = None
        for i, risk in enumerate(ctx.order):
            data = ctx.data(risk)
            block = init_from_text(base, tok, ctx.cfg.tokens[risk], ctx.risk(risk).init_text)
            weights = block if earlier is None else torch.cat([earlier, block])
            model = ctx.new_patch(weights.shape[0], init=weights)
            segments = segments_for([(r, ctx.cfg.tokens[r]) for r in ctx.order[:i + 1]])
            stage = ctx.stage(i + 1, risk)
            if not stage.restore(model):
                sft, pairs = data.sft, data.pairs
                if ctx.cfg.replay > 0 and len(buffer):
                    sft, pairs = buffer.mix(sft, pairs, share=ctx.cfg.replay, seed=ctx.cfg.seed + i)
                frozen = slice(0, 0 if earlier is None else earlier.shape[0])
                training = ctx.train(model, sft, pairs, reference=Reference(prefix=earlier), frozen_rows=frozen,
                                     desc=f"stage {i + 1}/{len(ctx.order)} {risk} (block {i + 1})")
                stage.finish(model, segments, training)
            earlier = get_prompt(model)
            buffer.add(risk, data.sft, data.pairs)
        if ctx.cfg.replay > 0:
            buffer.save(ctx.out_dir / "replay.json")
        return model, segments_for([(r, ctx.cfg.tokens[r]) for r in ctx.order])
