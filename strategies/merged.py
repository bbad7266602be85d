"""Specialists of equal length combined into one patch of that length.

Methods (``merge.method`` in the run config):

* ``average``: ``P = sum_i w_i P_i`` with weights normalised to sum to 1 (equal by default);
* ``ties``: sign-aware merge of the changes ``D_i = P_i - P_i^init`` from each specialist's initialisation
  (keep the largest ``density`` share of each ``D_i``, elect a sign per coordinate, average the agreeing
  ones), added to the mean initialisation;
* ``task-arithmetic`` and ``dare-ties`` likewise on the changes.
The tensor math is ``peft.utils.merge_utils`` (PEFT's adapter merging itself is LoRA-only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from peft.utils import merge_utils

from compose.config import RunConfig
from compose.errors import ComposeError
from compose.patch import init_from_text
from compose.strategy import Composition, Strategy

METHODS = ("average", "task-arithmetic", "ties", "dare-ties")
DEFAULTS = RunConfig(risks=[]).merge  # the run config's merge mapping holds the defaults


def merge_prompts(prompts: list[torch.Tensor], inits: list[torch.Tensor], method: str = DEFAULTS["method"],
                  weights: list[float] | None = DEFAULTS["weights"], density: float = DEFAULTS["density"],
                  seed: int = 0) -> torch.Tensor:
    """Merge equal-shape soft prompts; see the module docstring for the methods."""
    if method not in METHODS:
        raise ComposeError(f"unknown merge method '{method}'; valid: {', '.join(METHODS)}")
    shapes = {tuple(p.shape) for p in prompts}
    if len(shapes) != 1:
        raise ComposeError(f"merged needs specialists of equal length, got shapes {sorted(shapes)}; "
                           f"give every risk the same --tokens")
    w = torch.tensor(weights if weights is not None else [1.0] * len(prompts), dtype=torch.float32)
    if len(w) != len(prompts) or (w < 0).any() or w.sum() <= 0:
        raise ComposeError(f"merge weights must be {len(prompts)} non-negative numbers with a positive sum, "
                           f"got {weights}")
    w = w / w.sum()
    if method == "average":
        return merge_utils.task_arithmetic(list(prompts), w)
    deltas = [p - i for p, i in zip(prompts, inits)]
    init = torch.stack(inits).mean(0)
    if method == "task-arithmetic":
        return init + merge_utils.task_arithmetic(deltas, w)
    if method == "ties":
        return init + merge_utils.ties(deltas, w, density=density)
    torch.manual_seed(seed)
    return init + merge_utils.dare_ties(deltas, w, density=density)


@dataclass
class MergeOptions:
    """Options of the merged strategy (the run config's ``merge`` mapping)."""

    section: ClassVar[str | None] = "merge"
    method: str = field(default=DEFAULTS["method"], metadata={
        "help": f"how the specialists are merged: {', '.join(METHODS)}"})
    weights: list | dict | None = field(default=DEFAULTS["weights"], metadata={
        "help": "weight of each specialist: a list in run order or {risk: weight} (default: equal)"})
    density: float = field(default=DEFAULTS["density"], metadata={
        "help": "share of each change kept by ties and dare-ties, in [0, 1]"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ComposeError(f"unknown merge method '{self.method}'; valid: {', '.join(METHODS)}")
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) or not 0 <= self.density <= 1:
            raise ComposeError(f"merge density must be a number in [0, 1], got {self.density!r}")
        if self.weights is not None and not isinstance(self.weights, (list, dict)):
            raise ComposeError(f"merge weights must be a list or a mapping of risk to weight, got {self.weights!r}")


class Merged(Strategy):
    name = "merged"
    layout = "composed"
    description = "specialists of equal length averaged (or TIES/DARE-merged) into one patch"
    Options = MergeOptions

    def stages(self, ctx):
        return []

    def compose(self, ctx, last):
        lengths = {ctx.cfg.tokens[r] for r in ctx.order}
        if len(lengths) != 1:
            raise ComposeError(f"merged needs the same token count for every risk, got {ctx.cfg.tokens}")
        prompts = [ctx.specialist(risk) for risk in ctx.order]
        base, tok = ctx.loaded.model, ctx.loaded.tokenizer
        inits = [init_from_text(base, tok, p.shape[0], ctx.risk(r).init_text) for r, p in zip(ctx.order, prompts)]
        opts = self.options
        weights = opts.weights
        if isinstance(weights, dict):
            weights = [float(weights.get(r, 1.0)) for r in ctx.order]
        merged = merge_prompts(prompts, inits, opts.method, weights, float(opts.density), ctx.cfg.seed)
        model = ctx.new_patch(merged.shape[0], init=merged)
        return Composition(model, ctx.shared_segments(merged.shape[0], ctx.order),
                           {"composition": f"merge ({opts.method})", "weights": weights, "density": opts.density})
