"""One patch, trained on risk 1, then further trained on risk 2, ... (with or without replay)."""

from __future__ import annotations

from compose.replay import ReplayBuffer
from strategies.base import Strategy


class Sequential(Strategy):
    name = "sequential"
    description = "one shared patch trained on each risk in turn (no replay: the forgetting baseline)"
    replay = False

    def run(self, ctx):
        total = ctx.cfg.total_tokens
        model = ctx.new_patch(total, init_text=" ".join(ctx.risk(r).init_text for r in ctx.order))
        buffer = ReplayBuffer()
        share = ctx.cfg.replay if self.replay else 0.0
        for i, risk in enumerate(ctx.order):
            data = ctx.data(risk)
            stage = ctx.stage(i + 1, risk)
            if not stage.restore(model):
                sft, pairs = data.sft, data.pairs
                if share > 0 and len(buffer):
                    sft, pairs = buffer.mix(sft, pairs, share=share, seed=ctx.cfg.seed + i)
                training = ctx.train(model, sft, pairs, desc=f"stage {i + 1}/{len(ctx.order)} {risk}")
                stage.finish(model, ctx.shared_segments(total, ctx.order[:i + 1]), training)
            buffer.add(risk, data.sft, data.pairs)
        if share > 0:
            buffer.save(ctx.out_dir / "replay.json")
        return model, ctx.shared_segments(total, ctx.order)


class SequentialReplay(Sequential):
    name = "sequential-replay"
    description = "as sequential, mixing a replay buffer of earlier risks' data into each later stage"
    replay = True
    settings = ("replay",)

