"""The settings of a run: presets, the ``RunConfig`` dataclass, and reading a YAML config file.

Precedence: preset < config file < flags; the application resolves them into one ``RunConfig``
(``compose.cli.config.resolve``, which knows the risk and strategy registries). The resolved config is written into
the run folder so every number in it can be reproduced with ``compose run --config RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from compose.errors import ComposeError, suggest
from compose.io import atomic_write_text
from compose.replay import DEFAULT_SHARE
from compose.schema import Field, check_fields, kind_of
from compose.train import TrainConfig

PRESETS: dict[str, dict] = {
    # seconds on the tiny model: for tests and for checking a set-up
    "smoke": {"tokens": 4, "train_limit": 6, "retain_limit": 2, "eval_limit": 4, "max_new_tokens": 8,
              "samples": 2, "train": {"sft_epochs": 1, "dpo_epochs": 1, "batch_size": 4, "max_length": 320}},
    # the default: a real run on the embedded model on 2 CPU cores (three risks, n = 200: 21-24 minutes from an
    # empty cache, 18-20 with the teacher data and base evaluation cached);
    # as many benign retain prompts as risk prompts: with 16 the composed patch refused 74% of benign look-alikes
    "quick": {"tokens": 16, "train_limit": 48, "retain_limit": 48, "eval_limit": 200, "max_new_tokens": 32,
              "samples": 2, "train": {"sft_epochs": 3, "sft_lr": 3e-3, "dpo_epochs": 1, "dpo_lr": 1e-3,
                                      "batch_size": 8, "max_length": 160},
              # the refusal decision needs a 10x larger SFT step (harm specialist, n = 200 / 90: ASR 0.815 -> 0.500,
              # over-refusal 0.033 -> 0.133; at 3e-3 ASR 0.805); toxicity and bias lose ground at that rate. With
              # 48 harmful prompts it stops at ASR 0.31-0.39 on AdvBench; 120 of them, every benign retain prompt
              # (102) and 4 epochs reach 0.07-0.11 with over-refusal <= 0.04 (3 seeds; experiments/results/recipe).
              # Imitating the safest of 4 sampled continuations makes the toxicity patch continue more and more
              # toxic (toxic rate 0.125 -> 0.205, n = 200); DPO at 1e-2 for 3 epochs against the most toxic sample
              # is what lowers it (0.030; experiments/results/recipe/toxicity-sweep). The equalizing loss on the bias
              # examples with SFT at 1e-2 lowers GLD 0.451 -> 0.327 (n = 200; GAS 0.300 -> 0.265;
              # experiments/results/recipe/bias-sweep). The harm stage of the main job keeps it on the replayed bias
              # examples at a quarter of that weight: without it the harm stage undoes the bias stage (main job,
              # seed 0: GLD 0.287 -> 0.585); at the full weight it does not learn to refuse (ASR 0.790, the refusal's
              # first-token probability 0.06 -> 0.11); at 5 it does both in seed 0 (GLD 0.343, ASR 0.065). Keeping
              # the replayed examples by KL instead (replay_objective: kl) moved the same trade-off between seeds
              # without removing it; projecting the harm gradient (replay_projection: agem) keeps every risk within
              # 0.10 of its specialist in 3 seeds, its bias gain significant in 1 (experiments/results/composition).
              # The bias recipe that meets the bias target alone on every set in 3 of 3 seeds (the "{prompt} they"
              # teacher, its opening weighted 10, 120 prompts, two rounds balancing the patch's own answers;
              # experiments/recipes/bias-evasion/story-position-5-they-lead-10-data-120-own-2.yaml) is not this
              # one: in the main job its patch echoes every prompt, and the harm stage no longer learns to refuse
              # (seed 0: ASR 0.635 against 0.065); trained last, it raises the toxic rate to 0.225, and a toxicity
              # stage after it takes back harm and bias (experiments/results/main-job-bias-own-2)
              "risk_train": {"harmfulness": {"sft_lr": 0.03, "sft_epochs": 4, "train_limit": 120, "retain_limit": 102,
                                             "balance_weight": 5.0},
                             "toxicity": {"dpo_lr": 0.01, "dpo_epochs": 3},
                             "bias": {"sft_lr": 0.01, "balance_weight": 20.0}}},
    # the published settings (50 tokens, ~10 SFT epochs at 3e-3, then DPO): meant for a GPU
    "paper": {"tokens": 50, "train_limit": 256, "retain_limit": 64, "eval_limit": 300, "max_new_tokens": 64,
              "samples": 4, "train": {"sft_epochs": 10, "sft_lr": 3e-3, "dpo_epochs": 2, "dpo_lr": 1e-3,
                                      "batch_size": 8, "max_length": 256}},
}
DEFAULT_PRESET = "quick"
DEFAULT_STRATEGY = "sequential-replay"  # compose run
# compose search allocates tokens among risks, which only means something when each risk owns a block of the
# patch (stacked, concatenated); in sequential-replay every risk uses every token and only the total would matter
SEARCH_STRATEGY = "stacked"
MAX_TOKENS = 4096  # virtual tokens of one risk's patch: far beyond any useful patch, well inside memory
CONSTRAINT_KINDS = ("after", "requires", "conflicts")
# the settings of a risk's recipe (``risk_train``) that size its training data rather than set its training
RISK_DATA_KEYS = ("train_limit", "retain_limit")


@dataclass
class RunConfig:
    """Everything a run depends on. ``tokens`` maps each risk to its number of virtual tokens."""

    risks: list[str]
    strategy: str = DEFAULT_STRATEGY
    model: str = "smollm2-135m"
    dtype: str = "auto"
    preset: str = DEFAULT_PRESET
    tokens: dict[str, int] = field(default_factory=dict)
    replay: float = DEFAULT_SHARE  # the option of the strategies with replay (compose.replay.ReplayOptions)
    activation: str = "subsets"  # the option of the modular strategy (strategies.modular.ModularOptions)
    seed: int = 0
    order: str = "given"  # "given" (dependency graph, ties in the user's order) or "auto" (measured interference)
    train_limit: int = 48
    retain_limit: int = 16
    eval_limit: int = 32
    max_new_tokens: int = 32
    samples: int = 2
    # the options of the merged strategy at their defaults: strategies.merged.MergeOptions takes its defaults from here
    merge: dict = field(default_factory=lambda: {"method": "average", "weights": None, "density": 0.5})
    data: dict[str, dict[str, str]] = field(default_factory=dict)  # risk -> split -> file or dataset id
    constraints: dict[str, dict] = field(default_factory=dict)  # risk -> {after, requires, conflicts}
    margin: float = 0.2
    min_chosen_safety: float = 0.5
    train: TrainConfig = field(default_factory=TrainConfig)
    # risk -> settings that differ for that risk (a preset's recipe per risk): training settings (see train_for)
    # and how many of its prompts it learns from (``train_limit``, ``retain_limit``; see limits_for)
    risk_train: dict[str, dict] = field(default_factory=dict)
    # risk -> options of that risk's plugin (``compose run --opt RISK:KEY=VALUE``; e.g. {bias: {teacher_score:
    # story}}), beside the generation settings every risk takes from the run (samples, max_new_tokens, seed)
    risk_options: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    def save(self, path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def digest(self, *keys: str) -> str:
        """A short hash of the named settings (all of them by default): keys for caches and resume checks."""
        d = self.to_dict()
        d = {k: d[k] for k in keys} if keys else d
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def train_for(self, risks: list[str] | None) -> TrainConfig:
        """The training settings of a stage that learns ``risks``' data: ``train`` with the ``risk_train``
        settings every one of those risks shares (a joint stage of risks whose recipes differ keeps ``train``)."""
        overrides = [{k: v for k, v in self.risk_train.get(r, {}).items() if k not in RISK_DATA_KEYS}
                     for r in risks or []]
        if not overrides:
            return self.train
        common = {k: v for k, v in overrides[0].items() if all(o.get(k) == v for o in overrides[1:])}
        return dataclasses.replace(self.train, **common) if common else self.train

    def limits_for(self, risk: str) -> dict[str, int]:
        """How many of ``risk``'s prompts its training data holds: ``train_limit`` risk prompts and
        ``retain_limit`` retain prompts, the run's unless the risk's recipe (``risk_train``) sets its own."""
        own = self.risk_train.get(risk, {})
        return {k: int(own.get(k, getattr(self, k))) for k in RISK_DATA_KEYS}

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens[r] for r in self.risks)


def settings_schema(cls, overrides: dict[str, Field]) -> dict[str, Field]:
    """Optional fields of ``cls``'s settings, typed by their defaults (``overrides`` where that says too little)."""
    fields = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields[f.name] = Field(kind_of(default), required=False)
    return {**fields, **overrides}


def risk_recipe_schema() -> dict[str, Field]:
    """The settings one risk's recipe (``risk_train.RISK``) may hold: training settings and its data sizes."""
    return settings_schema(TrainConfig, {"train_limit": Field("int", required=False, minimum=1),
                                         "retain_limit": Field("int", required=False, minimum=0)})


def check_settings(d: dict, where: str) -> dict:
    """Types of a run config's settings (its ``train`` mapping too), checked as it is read."""
    limit = {k: Field("int", required=False, minimum=1) for k in ("train_limit", "eval_limit", "max_new_tokens",
                                                                  "samples")}
    check_fields(d, settings_schema(RunConfig, {
        "risks": Field("str-or-list", required=False), "tokens": Field("tokens", required=False),
        "replay": Field("number", required=False, minimum=0, maximum=0.999),
        "retain_limit": Field("int", required=False, minimum=0), "train": Field("dict", required=False), **limit}),
        where)
    check_fields(d.get("train") or {}, settings_schema(TrainConfig, {}), f"{where}, train")
    for risk, train in (d.get("risk_train") or {}).items():
        if not isinstance(train, dict):
            raise ComposeError(f"{where}: risk_train.{risk} must be a mapping of training settings, e.g. "
                               f"{{sft_lr: 0.03}}")
        check_fields(train, risk_recipe_schema(), f"{where}, risk_train.{risk}")
    for risk, options in (d.get("risk_options") or {}).items():
        if not isinstance(options, dict):
            raise ComposeError(f"{where}: risk_options.{risk} must be a mapping of the risk's options, e.g. "
                               f"{{teacher_score: story}}")
    check_fields(d.get("merge") or {}, {"method": Field("str", required=False), "weights": Field("any", required=False),
                                        "density": Field("number", required=False, minimum=0, maximum=1)},
                 f"{where}, merge")
    return d


def check_token_counts(tokens: dict[str, int]) -> None:
    """Every risk's token count from 1 to ``MAX_TOKENS``."""
    for r, n in tokens.items():
        if not 1 <= n <= MAX_TOKENS:
            raise ComposeError(f"token count of '{r}' must be a positive integer up to {MAX_TOKENS}, got {n}")


def parse_tokens(text: str | None) -> dict[str, int | str]:
    """``"tox=20,bias=20,harm=10"`` -> {"tox": 20, ...}; a bare number applies to every risk (key ``"*"``)."""
    if not text:
        return {}
    if text.strip().isdigit():
        return {"*": int(text)}
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = int(value)
        except ValueError:
            raise ComposeError(f"bad --tokens entry '{part}'; expected RISK=N, e.g. tox=20,bias=20,harm=10") from None
    return out


def load_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ComposeError(f"config file '{path}' does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ComposeError(f"malformed config file {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(d, dict):
        raise ComposeError(f"malformed config file {path}: expected a mapping of settings")
    return check_settings(d, f"config file {path}")


def check_keys(d: dict, valid, where: str) -> None:
    """Refuse a key of ``d`` that is not in ``valid``, naming the close one and the valid ones."""
    for key in d:
        if key not in valid:
            raise ComposeError(f"unknown setting '{key}' in {where}{suggest(key, valid)}; valid: {', '.join(valid)}")

