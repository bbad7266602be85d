"""The strategy contract: one stage loop that every strategy plugs into.

The loop (``Strategy.run``) owns what every strategy needs the same way: stage folders, restoring finished stages
on resume, training, evaluation rows of the forgetting matrix, saving, replay, and the composed row. A strategy
fills in three hooks:

* ``stages(ctx)``: the names of its training stages (default: one per risk, in the run order);
* ``plan(ctx, index, name, previous)``: what stage ``index`` trains, as a ``StagePlan`` (the patched model,
  its segments, the risks whose data it learns, frozen rows, DPO reference); ``previous`` is the plan of the
  stage before, its model trained (or restored);
* ``compose(ctx, last)``: the final patch, as a ``Composition`` (default: the last stage's model and segments);
  a composition with ``info`` gets its own evaluated and saved "composed" row.

Options: a strategy declares them as a dataclass (``Options``; fields with ``metadata={"help": ...}``,
validated in ``__post_init__``). ``section`` says where they live in a run config: ``None`` for top-level
settings (``replay``), or the name of a mapping (``merge: {method, weights, density}``). Replay is one
reusable piece (``compose.replay.Replay``) the loop applies to any strategy whose options have a ``replay``
share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from compose.errors import ComposeError
from compose.patch import Segment, get_prompt
from compose.replay import Replay
from compose.train import Reference

LAYOUTS = ("sequential", "composed")


@dataclass
class NoOptions:
    """The options of a strategy that has none."""

    section: ClassVar[str | None] = None


@dataclass
class StagePlan:
    """What one training stage trains; the loop restores it when finished, else trains, evaluates and saves it.

    ``name`` is the stage's folder and row name; ``model`` the patched model it trains (a finished stage's patch
    is loaded into it); ``risks`` the risks whose training data it learns (the replay share of earlier risks is
    mixed in by the loop); ``trained`` the risk the matrix row names (None: several, as in joint training);
    ``kind`` the row's kind (``stage`` or ``composed``); ``subsets``: the patch's per-risk blocks, when each
    example is to be trained with a random subset of them active (its own risk's among them; see
    ``compose.train.PatchSFTTrainer``).
    """

    name: str
    model: Any
    segments: list[Segment]
    risks: list[str]
    reference: Reference | None = None
    frozen_rows: slice | None = None
    kind: str = "stage"
    trained: str | None = ""  # "": the stage's name
    desc: str = ""
    subsets: list[Segment] | None = None


@dataclass
class Composition:
    """The final patch of a run. With ``info`` (how it was composed), it is evaluated and saved as the run's
    "composed" row; without, it is the last stage's patch, already in the matrix."""

    model: Any
    segments: list[Segment]
    info: dict | None = None


class Strategy:
    """A way to turn per-risk patches into one: the stage loop plus the hooks a strategy fills in.

    ``layout`` says how the forgetting matrix reads: ``"sequential"`` (base row, then one stage per risk) or
    ``"composed"`` (specialists or one joint stage, then the composed patch).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    layout: ClassVar[str] = "sequential"
    Options: ClassVar[type] = NoOptions

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    # -- the hooks ---------------------------------------------------------------------------------------
    def stages(self, ctx) -> list[str]:
        """The names of the training stages, in order (default: one per risk of the run)."""
        return list(ctx.order)

    def plan(self, ctx, index: int, name: str, previous: StagePlan | None) -> StagePlan:
        """What stage ``index`` (0-based) named ``name`` trains; a strategy with stages must fill this in."""
        raise NotImplementedError(f"strategy '{self.name}' has stages but no plan()")

    def compose(self, ctx, last: StagePlan | None) -> Composition:
        """The final patch (default: the last stage's model and segments)."""
        return Composition(last.model, last.segments)

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self, ctx) -> tuple[Any, list[Segment]]:
        """Train every stage (restoring finished ones), compose, and return ``(patched model, segments)``."""
        replay = Replay(getattr(self.options, "replay", 0.0), seed=ctx.cfg.seed)
        learned = {}  # risk -> the patch its own stage left: what answers its fresh replayed prompts
        previous = None
        for index, name in enumerate(self.stages(ctx)):
            plan = self.plan(ctx, index, name, previous)
            stage = ctx.stage(index + 1, plan.name)
            if not stage.restore(plan.model, kind=plan.kind, trained=plan.trained):
                # with subsets, each risk example names its own block (a retain example none: -1)
                own = {s.risk: i for i, s in enumerate(plan.subsets or [])}
                sft = [{**e, "block": own[r] if e.get("source") == "risk" else -1} if own else e
                       for r in plan.risks for e in ctx.data(r).sft]
                pairs = [p for r in plan.risks for p in ctx.data(r).pairs]
                sft, pairs = replay.mix(index, sft, pairs)
                sft = sft + ctx.fresh_replay(plan.model, replay.risks, index, plan.name, plan.risks, learned)
                training = ctx.train(plan.model, sft, pairs, reference=plan.reference, frozen_rows=plan.frozen_rows,
                                     desc=plan.desc or f"stage {index + 1} {plan.name}", risks=plan.risks,
                                     subsets=plan.subsets)
                stage.finish(plan.model, plan.segments, training, kind=plan.kind, trained=plan.trained)
            for risk in plan.risks:
                replay.add(risk, ctx.data(risk))
                if replay.share > 0:
                    learned[risk] = get_prompt(plan.model)
            previous = plan
        replay.save(ctx.out_dir / "replay.json")
        final = self.compose(ctx, previous)
        if final.info is not None:
            ctx.composed_row(final.model, final.segments, final.info)
        return final.model, final.segments


def option_fields(cls: type[Strategy]) -> list[dataclasses.Field]:
    """The options a strategy class declares (its ``Options`` dataclass's fields)."""
    return list(dataclasses.fields(cls.Options))


def options_from_config(cls: type[Strategy], config: dict):
    """The ``Options`` of strategy ``cls`` read from a run config (as a dict): its section, or the top level."""
    section = cls.Options.section
    source = (config.get(section) or {}) if section else config
    return make_options(cls, {f.name: source[f.name] for f in option_fields(cls) if f.name in source})


def make_options(cls: type[Strategy], values: dict):
    """``cls.Options(**values)``, with what its validation refuses as a one-line ``ComposeError``."""
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as exc:
        raise ComposeError(f"invalid options of strategy '{cls.name}': {exc}") from exc


def describe_options(cls: type[Strategy]) -> list[str]:
    """One line per option of ``cls``: ``name (default X): help``."""
    lines = []
    for f in option_fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"{f.name} (default {default}): {f.metadata.get('help', '')}")
    return lines


def check_strategy_class(cls) -> list[str]:
    """What a strategy class lacks to satisfy the contract (empty when it is complete)."""
    missing = []
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return ["to be a subclass of compose.strategy.Strategy"]
    if not isinstance(cls.name, str) or not cls.name:
        missing.append("a 'name'")
    if cls.layout not in LAYOUTS:
        missing.append(f"'layout' as one of {', '.join(LAYOUTS)}")
    if not dataclasses.is_dataclass(cls.Options):
        missing.append("'Options' as a dataclass")
    if cls.plan is Strategy.plan and cls.stages is Strategy.stages:
        missing.append("plan() (or stages() returning no stage)")
    return missing
