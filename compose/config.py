"""The settings of a run: presets, a YAML file, and command-line flags, resolved into one ``RunConfig``.

Precedence: preset < config file < flags. The resolved config is written into the run folder so every
number in it can be reproduced with ``compose run --config RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from compose.errors import ComposeError, suggest
from compose.schema import Field, check_fields, kind_of
from compose.train import TrainConfig

PRESETS: dict[str, dict] = {
    # seconds on the tiny model: for tests and for checking a set-up
    "smoke": {"tokens": 4, "train_limit": 6, "retain_limit": 2, "eval_limit": 4, "max_new_tokens": 8,
              "samples": 2, "train": {"sft_epochs": 1, "dpo_epochs": 1, "batch_size": 4, "max_length": 320}},
    # the default: a real run on the embedded model on 2 CPU cores (about 20 minutes for three risks, n = 200);
    # as many benign retain prompts as risk prompts: with 16 the composed patch refused 74% of benign look-alikes
    "quick": {"tokens": 16, "train_limit": 48, "retain_limit": 48, "eval_limit": 200, "max_new_tokens": 32,
              "samples": 2, "train": {"sft_epochs": 3, "sft_lr": 3e-3, "dpo_epochs": 1, "dpo_lr": 1e-3,
                                      "batch_size": 8, "max_length": 160}},
    # the published settings (50 tokens, ~10 SFT epochs at 3e-3, then DPO): meant for a GPU
    "paper": {"tokens": 50, "train_limit": 256, "retain_limit": 64, "eval_limit": 300, "max_new_tokens": 64,
              "samples": 4, "train": {"sft_epochs": 10, "sft_lr": 3e-3, "dpo_epochs": 2, "dpo_lr": 1e-3,
                                      "batch_size": 8, "max_length": 256}},
}
DEFAULT_PRESET = "quick"
MAX_TOKENS = 4096  # virtual tokens of one risk's patch: far beyond any useful patch, well inside memory
CONSTRAINT_KINDS = ("after", "requires", "conflicts")


@dataclass
class RunConfig:
    """Everything a run depends on. ``tokens`` maps each risk to its number of virtual tokens."""

    risks: list[str]
    strategy: str = "sequential-replay"
    model: str = "smollm2-135m"
    dtype: str = "auto"
    preset: str = DEFAULT_PRESET
    tokens: dict[str, int] = field(default_factory=dict)
    replay: float = 0.25
    seed: int = 0
    order: str = "given"  # "given" (dependency graph, ties in the user's order) or "auto" (measured interference)
    train_limit: int = 48
    retain_limit: int = 16
    eval_limit: int = 32
    max_new_tokens: int = 32
    samples: int = 2
    merge: dict = field(default_factory=lambda: {"method": "average", "weights": None, "density": 0.5})
    data: dict[str, dict[str, str]] = field(default_factory=dict)  # risk -> split -> file or dataset id
    constraints: dict[str, dict] = field(default_factory=dict)  # risk -> {after, requires, conflicts}
    margin: float = 0.2
    min_chosen_safety: float = 0.5
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    def save(self, path) -> None:
        from compose.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def digest(self, *keys: str) -> str:
        """A short hash of the named settings (all of them by default): keys for caches and resume checks."""
        d = self.to_dict()
        d = {k: d[k] for k in keys} if keys else d
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens[r] for r in self.risks)


def _settings_schema(cls, overrides: dict[str, Field]) -> dict[str, Field]:
    """Optional fields of ``cls``'s settings, typed by their defaults (``overrides`` where that says too little)."""
    fields = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields[f.name] = Field(kind_of(default), required=False)
    return {**fields, **overrides}


def check_settings(d: dict, where: str) -> dict:
    """Types of a run config's settings (its ``train`` mapping too), checked as it is read."""
    limit = {k: Field("int", required=False, minimum=1) for k in ("train_limit", "eval_limit", "max_new_tokens",
                                                                  "samples")}
    check_fields(d, _settings_schema(RunConfig, {
        "risks": Field("str-or-list", required=False), "tokens": Field("tokens", required=False),
        "replay": Field("number", required=False, minimum=0, maximum=0.999),
        "retain_limit": Field("int", required=False, minimum=0), "train": Field("dict", required=False), **limit}),
        where)
    check_fields(d.get("train") or {}, _settings_schema(TrainConfig, {}), f"{where}, train")
    check_fields(d.get("merge") or {}, {"method": Field("str", required=False), "weights": Field("any", required=False),
                                        "density": Field("number", required=False, minimum=0, maximum=1)},
                 f"{where}, merge")
    return d


def canonical_constraints(raw: dict, where: str = "constraints") -> dict[str, dict[str, list[str]]]:
    """``{risk: {after|requires|conflicts: [risks]}}`` with every risk named canonically (aliases resolved), so a
    cycle written with aliases is found like one written with names."""
    from risks import risk_class

    out = {}
    for risk, kinds in (raw or {}).items():
        check_fields(kinds, {k: Field("str-list", required=False) for k in CONSTRAINT_KINDS}, f"{where}.{risk}")
        _check_keys(kinds, CONSTRAINT_KINDS, f"{where}.{risk}")
        out[risk_class(risk).name] = {k: [risk_class(x).name for x in v] for k, v in kinds.items()}
    return out


def check_token_counts(tokens: dict[str, int]) -> None:
    """Every risk's token count from 1 to ``MAX_TOKENS``."""
    for r, n in tokens.items():
        if not 1 <= n <= MAX_TOKENS:
            raise ComposeError(f"token count of '{r}' must be a positive integer up to {MAX_TOKENS}, got {n}")


def _check_keys(d: dict, valid, where: str) -> None:
    for key in d:
        if key not in valid:
            raise ComposeError(f"unknown setting '{key}' in {where}{suggest(key, valid)}; valid: {', '.join(valid)}")


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


def resolve(file: dict | None = None, **flags) -> RunConfig:
    """Merge preset, config file and flags (``None`` flags are unset) into a validated ``RunConfig``.

    Risk names and aliases are resolved to canonical names here; ``tokens`` may name risks by alias.
    """
    from risks import get_risk
    from strategies import get_strategy

    file = dict(file or {})
    valid = [f.name for f in dataclasses.fields(RunConfig)]
    _check_keys(file, valid, "the config file")
    flags = {k: v for k, v in flags.items() if v is not None}
    preset_name = flags.get("preset") or file.get("preset") or DEFAULT_PRESET
    if preset_name not in PRESETS:
        raise ComposeError(f"unknown preset '{preset_name}'{suggest(preset_name, PRESETS)}; "
                           f"valid: {', '.join(PRESETS)}")
    preset = json.loads(json.dumps(PRESETS[preset_name]))
    merged: dict = {**preset, **file, **flags, "preset": preset_name}
    train = {**preset.get("train", {}), **(file.get("train") or {}), **(flags.get("train") or {})}
    _check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)], "train settings")

    raw_risks = merged.get("risks")
    if isinstance(raw_risks, str):
        raw_risks = [r.strip() for r in raw_risks.split(",") if r.strip()]
    if not raw_risks:
        raise ComposeError("no risks given; use --risks, e.g. --risks tox,bias,harm (see `compose risks`)")
    risks = [get_risk(r).name for r in raw_risks]
    dupes = sorted({r for r in risks if risks.count(r) > 1})
    if dupes:
        raise ComposeError(f"risk '{dupes[0]}' is named twice in --risks {','.join(raw_risks)}")
    get_strategy(merged.get("strategy", "sequential-replay"))

    tokens_in = merged.get("tokens")
    if isinstance(tokens_in, str):
        tokens_in = parse_tokens(tokens_in)
    elif isinstance(tokens_in, int):
        tokens_in = {"*": tokens_in}
    default = tokens_in.pop("*", preset["tokens"]) if isinstance(tokens_in, dict) else preset["tokens"]
    tokens = {r: int(default) for r in risks}
    for name, n in (tokens_in or {}).items():
        canonical = get_risk(name).name
        if canonical not in risks:
            raise ComposeError(f"--tokens names risk '{name}', which is not in this run; risks: {', '.join(risks)}")
        tokens[canonical] = int(n)
    check_token_counts(tokens)

    replay = float(merged.get("replay", 0.25))
    if not 0.0 <= replay < 1.0:
        raise ComposeError(f"replay share must be in [0, 1), got {replay}")
    for key in ("train_limit", "eval_limit", "max_new_tokens", "samples"):
        if int(merged.get(key, 1)) < 1:
            raise ComposeError(f"{key} must be >= 1, got {merged[key]}")
    if merged.get("order", "given") not in ("given", "auto"):
        raise ComposeError(f"unknown order '{merged['order']}'; valid: given, auto")
    data = merged.get("data") or {}
    data = {get_risk(r).name: splits for r, splits in data.items()}
    constraints = canonical_constraints(merged.get("constraints") or {})
    fields = {k: merged[k] for k in valid if k in merged and k not in ("train", "risks", "tokens", "data",
                                                                         "constraints")}
    try:
        return RunConfig(risks=risks, tokens=tokens, data=data, constraints=constraints,
                         train=TrainConfig(**train), **{**fields, "replay": replay})
    except (TypeError, ValueError) as exc:
        raise ComposeError(f"invalid run settings: {exc}") from exc
