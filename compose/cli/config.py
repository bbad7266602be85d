"""Resolving what the user asked for into settings: ``RunConfig`` from preset < config file < flags, the run's
risks (registry lookups, ``--data``, ``--opt``), the strategy's options, and the run order.

This is the application's part of the configuration: it knows the risk and strategy registries, which the
library (``compose.config``: presets, the dataclass, reading a file) does not.
"""

from __future__ import annotations

import dataclasses
import json

import yaml

from compose.config import (CONSTRAINT_KINDS, DEFAULT_PRESET, DEFAULT_STRATEGY, PRESETS, RISK_DATA_KEYS, RunConfig,
                            check_keys, check_token_counts, parse_tokens, settings_schema)
from compose.errors import ComposeError, suggest
from compose.generation import MAX_SAMPLES
from compose.graph import resolve_order as topological_order
from compose.schema import Field, check_fields, kind_of
from compose.strategy import make_options, option_fields
from compose.train import TrainConfig
from risks import canonical_name, get_risk, risk_class
from risks.base import POOL, SPLITS
from strategies import STRATEGIES, strategy_class

DATA_HELP = ("a risk's prompts from a .jsonl/.csv/.parquet/.txt file with a 'prompt' column or a Hugging Face "
             "dataset id (repeatable): RISK:SPLIT=PATH replaces one split (train, eval, retain, retain_eval); "
             "RISK=PATH is split in two by a stable hash of each prompt, half for training, half held out for eval")



def parse_data_args(items: list[str]) -> dict[str, dict[str, str]]:
    """``["harm:eval=a.jsonl", "bias=b.csv"]`` -> {"harm": {"eval": "a.jsonl"}, "bias": {"all": "b.csv"}}
    (no split: the whole file, split into train and eval by hash; see ``risks.base.POOL``)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        risk, _, split = key.partition(":")
        split = split.strip() or POOL
        if not sep or not risk.strip() or not value.strip() or split not in (*SPLITS, POOL):
            raise ComposeError(f"bad --data '{item}'; expected RISK[:SPLIT]=PATH with SPLIT one of "
                               f"{', '.join(SPLITS)} (none: the file is split into train and eval), "
                               "e.g. harm:eval=advbench.jsonl")
        out.setdefault(risk.strip(), {})[split] = value.strip()
    return out


def parse_option_args(items: list[str]) -> dict[str, dict]:
    """``["tox:samples=2"]`` -> {"tox": {"samples": 2}} (values parsed as JSON where they are JSON)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        risk, colon, name = key.partition(":")
        if not sep or not colon or not risk or not name:
            raise ComposeError(f"bad --opt '{item}'; expected RISK:KEY=VALUE, e.g. tox:samples=2")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(risk.strip(), {})[name.strip()] = parsed
    return out


def build_risks(names: str, data: dict, options: dict) -> list:
    """Risk instances for a comma-separated list of names, with per-risk data and options (keys may be aliases)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise ComposeError("no risks given; use --risks, e.g. --risks tox,bias,harm (see `compose risks`)")
    canonical = [risk_class(n).name for n in wanted]
    for kind, given in (("--data", data), ("--opt", options)):
        for key in given:
            if risk_class(key).name not in canonical:
                raise ComposeError(f"{kind} names risk '{key}', which is not evaluated; risks: {', '.join(canonical)}")
    for key, values in options.items():
        check_risk_options(risk_class(key), values)
    return [get_risk(name, data=_for_risk(data, name) or None, **_for_risk(options, name)) for name in canonical]


# bounds of the options every risk has (the others are typed by their defaults)
OPTION_BOUNDS = {"max_new_tokens": Field("int", minimum=1), "samples": Field("int", minimum=1, maximum=MAX_SAMPLES),
                 "temperature": Field("number", minimum=0.01), "top_p": Field("number", minimum=0.01, maximum=1),
                 "batch_size": Field("int", minimum=1), "seed": Field("int"), "template": Field("str")}


def check_risk_options(cls, options: dict) -> None:
    """Refuse ``--opt`` values of the wrong type or out of range (names are checked by the risk itself)."""
    defaults = cls().options
    fields = {k: OPTION_BOUNDS.get(k, Field(kind_of(v))) for k, v in defaults.items()}
    check_fields(options, {k: dataclasses.replace(f, required=False) for k, f in fields.items()}, f"--opt {cls.name}")


def _for_risk(given: dict[str, dict], name: str) -> dict:
    """The entries of ``given`` (keyed by risk names or aliases) that belong to risk ``name``, merged."""
    return {k: v for key, d in given.items() if risk_class(key).name == name for k, v in d.items()}



def canonical_constraints(raw: dict, where: str = "constraints") -> dict[str, dict[str, list[str]]]:
    """``{risk: {after|requires|conflicts: [risks]}}`` with every risk named canonically (aliases resolved), so a
    cycle written with aliases is found like one written with names."""
    out = {}
    for risk, kinds in (raw or {}).items():
        check_fields(kinds, {k: Field("str-list", required=False) for k in CONSTRAINT_KINDS}, f"{where}.{risk}")
        check_keys(kinds, CONSTRAINT_KINDS, f"{where}.{risk}")
        out[risk_class(risk).name] = {k: [risk_class(x).name for x in v] for k, v in kinds.items()}
    return out




def resolve(file: dict | None = None, options: dict | None = None, **flags) -> RunConfig:
    """Merge preset, config file and flags (``None`` flags are unset) into a validated ``RunConfig``.

    Risk names and aliases are resolved to canonical names here; ``tokens`` may name risks by alias.
    ``options`` are the strategy's options given on the command line, keyed by the flag that set them
    (``{"--replay": {"replay": 0.5}}``); like the strategy settings of the config file, each must be one the
    strategy uses (``check_strategy_options``).
    """
    file = dict(file or {})
    valid = [f.name for f in dataclasses.fields(RunConfig)]
    check_keys(file, valid, "the config file")
    flags = {k: v for k, v in flags.items() if v is not None}
    preset_name = flags.get("preset") or file.get("preset") or DEFAULT_PRESET
    if preset_name not in PRESETS:
        raise ComposeError(f"unknown preset '{preset_name}'{suggest(preset_name, PRESETS)}; "
                           f"valid: {', '.join(PRESETS)}")
    preset = json.loads(json.dumps(PRESETS[preset_name]))
    merged: dict = {**preset, **file, **flags, "preset": preset_name}
    train = {**preset.get("train", {}), **(file.get("train") or {}), **(flags.get("train") or {})}
    check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)], "train settings")
    # the run's seed also seeds training (data order, shuffles), unless a training seed is given: another --seed is
    # another run in every random choice, not only in the teacher's samples
    train.setdefault("seed", merged.get("seed", 0))

    raw_risks = merged.get("risks")
    if isinstance(raw_risks, str):
        raw_risks = [r.strip() for r in raw_risks.split(",") if r.strip()]
    if not raw_risks:
        raise ComposeError("no risks given; use --risks, e.g. --risks tox,bias,harm (see `compose risks`)")
    risks = [get_risk(r).name for r in raw_risks]
    dupes = sorted({r for r in risks if risks.count(r) > 1})
    if dupes:
        raise ComposeError(f"risk '{dupes[0]}' is named twice in --risks {','.join(raw_risks)}")
    given = {**file, **{k: flags[k] for k in FLAGS.values() if k in flags}}  # keyword flags: as in a file
    merged.update(check_strategy_options(merged.get("strategy", DEFAULT_STRATEGY), given, options or {}))

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

    for key in ("train_limit", "eval_limit", "max_new_tokens", "samples"):
        if int(merged.get(key, 1)) < 1:
            raise ComposeError(f"{key} must be >= 1, got {merged[key]}")
    if merged.get("order", "given") not in ("given", "auto"):
        raise ComposeError(f"unknown order '{merged['order']}'; valid: given, auto")
    user_set = {*(file.get("train") or {}), *(flags.get("train") or {}),
                *(k for k in RISK_DATA_KEYS if k in file or k in flags)}
    risk_train = resolve_risk_train(preset.get("risk_train") or {}, file.get("risk_train") or {}, user_set)
    data = merged.get("data") or {}
    data = {get_risk(r).name: splits for r, splits in data.items()}
    constraints = canonical_constraints(merged.get("constraints") or {})
    risk_options = resolve_risk_options(risks, file.get("risk_options") or {}, flags.get("risk_options") or {})
    fields = {k: merged[k] for k in valid if k in merged and k not in ("train", "risks", "tokens", "data",
                                                                         "constraints", "risk_train", "risk_options")}
    try:
        return RunConfig(risks=risks, tokens=tokens, data=data, constraints=constraints,
                         train=TrainConfig(**train), risk_train=risk_train, risk_options=risk_options, **fields)
    except (TypeError, ValueError) as exc:
        raise ComposeError(f"invalid run settings: {exc}") from exc


# the options every risk takes from the run's own settings (``run_risks``), which ``risk_options`` may not set
RUN_RISK_OPTIONS = ("samples", "max_new_tokens", "seed")


def resolve_risk_options(risks: list[str], file: dict, flags: dict) -> dict[str, dict]:
    """Per-risk plugin options by canonical risk name: the config file's ``risk_options``, then ``--opt`` on top
    (per option). Each must be an option of that risk, of its type, for a risk of the run."""
    out: dict[str, dict] = {}
    for source, where in ((file, "risk_options"), (flags, "--opt")):
        for name, values in source.items():
            cls = risk_class(name)
            if cls.name not in risks:
                raise ComposeError(f"{where} names risk '{name}', which is not in this run; risks: {', '.join(risks)}")
            for key in values:
                if key in RUN_RISK_OPTIONS:
                    where_set = f"{key}: in the config file" + (", or --seed" if key == "seed" else "")
                    raise ComposeError(f"{where} sets '{key}' of risk '{name}', which every risk takes from the run; "
                                       f"set the run's instead ({where_set})")
            check_risk_options(cls, values)
            out[cls.name] = {**out.get(cls.name, {}), **values}
    for name, values in out.items():
        get_risk(name, **values)  # an unknown option or a value the risk refuses: one line, before anything runs
    return {r: out[r] for r in risks if out.get(r)}


def resolve_risk_train(preset: dict, file: dict, user_set: set[str]) -> dict[str, dict]:
    """Per-risk recipes, by canonical risk name: the preset's recipe per risk, less every setting the user gave
    for all risks (``train`` in the file, ``--train``, ``train_limit`` / ``retain_limit``: a user's ``sft_lr``
    means every stage's), then the file's own ``risk_train`` on top. Every key must be a ``TrainConfig`` field or
    one of ``RISK_DATA_KEYS``."""
    valid = [f.name for f in dataclasses.fields(TrainConfig)] + list(RISK_DATA_KEYS)
    out: dict[str, dict] = {}
    for source, where in ((preset, "the preset's risk_train"), (file, "risk_train")):
        for name, settings in source.items():
            check_keys(settings, valid, f"{where}.{name}")
            risk = get_risk(name).name
            keep = settings if source is file else {k: v for k, v in settings.items() if k not in user_set}
            out[risk] = {**out.get(risk, {}), **keep}
    return {r: s for r, s in out.items() if s}


def check_strategy_options(name: str, file: dict, options: dict[str, dict]) -> dict:
    """The run settings that hold strategy ``name``'s options (``replay``; ``merge``), with the command line's
    ``options`` (keyed by the flag that set them: ``--option``, ``--replay``, ``--merge``) applied over the config
    file's; validated by the strategy's ``Options`` dataclass.

    A setting the strategy does not use is refused: from the command line always, from ``file`` (the config
    file's settings) when it differs from its default (a run's saved config.yaml holds every setting).
    """
    cls = strategy_class(name)
    valid = [f.name for f in option_fields(cls)]
    section = cls.Options.section
    defaults = RunConfig(risks=[])
    values = dict(file.get(section) or {}) if section else {k: file[k] for k in valid if k in file}
    for setting in _option_settings():
        if setting in file and file[setting] != getattr(defaults, setting) and not _uses(cls, setting):
            raise ComposeError(f"the config file sets '{setting}', which strategy '{name}' does not use; strategies "
                               f"that use it: {', '.join(_users(setting))}")
    for how, given in options.items():
        if how in FLAGS and not _uses(cls, FLAGS[how]):
            raise ComposeError(f"{how} is not used by strategy '{name}'; strategies that use it: "
                               f"{', '.join(_users(FLAGS[how]))}")
        for key, value in given.items():
            if key not in valid:
                raise ComposeError(f"unknown option '{key}' of strategy '{name}'{suggest(key, valid)}; valid: "
                                   f"{', '.join(valid) or 'none (it has no options)'} (see `compose strategies`)")
            values[key] = value
    opts = dataclasses.asdict(make_options(cls, values))
    if section:
        return {section: {**getattr(defaults, section), **opts}}
    return opts


# the flags of single options, and the run setting each one's option lives in
FLAGS = {"--replay": "replay", "--merge": "merge"}


def _option_settings() -> list[str]:
    """The run settings that hold some strategy's options (``replay``, ``merge``, ``activation``, ...)."""
    settings = dict.fromkeys(FLAGS.values())
    for c in STRATEGIES.values():
        names = [c.Options.section] if c.Options.section else [f.name for f in option_fields(c)]
        settings.update(dict.fromkeys(n for n in names if hasattr(RunConfig(risks=[]), n)))
    return list(settings)


def _uses(cls, setting: str) -> bool:
    """True when strategy class ``cls`` reads the run setting ``setting`` (its section, or a top-level option)."""
    section = cls.Options.section
    return section == setting or (section is None and setting in [f.name for f in option_fields(cls)])


def _users(setting: str) -> list[str]:
    return [n for n, c in STRATEGIES.items() if _uses(c, setting)]


def parse_assignments(items: list[str], flag: str) -> dict:
    """``["sft_lr=0.01", "method=ties"]`` -> {"sft_lr": 0.01, "method": "ties"} (values read as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ComposeError(f"bad {flag} '{item}'; expected KEY=VALUE, e.g. {flag} "
                               f"{'sft_lr=0.01' if flag == '--train' else 'replay=0.5'}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def parse_train_args(items: list[str]) -> dict:
    """``--train KEY=VALUE`` values, checked against ``TrainConfig``'s fields and their types."""
    train = parse_assignments(items, "--train")
    check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)], "--train")
    check_fields(train, settings_schema(TrainConfig, {}), "--train")
    return train


def run_risks(cfg: RunConfig) -> dict:
    """The run's risk instances by name, with the run's generation settings, its ``--data`` and ``--opt``."""
    options = {"samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    return {name: get_risk(name, data=cfg.data.get(name), **options, **cfg.risk_options.get(name, {}))
            for name in cfg.risks}


def risk_constraints(cfg: RunConfig) -> dict[str, dict]:
    """Ordering constraints of the run's risks: the plugins' metadata plus the run config's additions, every risk
    named canonically (a plugin may name others by alias)."""
    constraints = {}
    for r in cfg.risks:
        risk = risk_class(r)
        extra = cfg.constraints.get(r, {})
        constraints[r] = {k: [canonical_name(x) for x in getattr(risk, k, ()) or ()] + list(extra.get(k, []))
                          for k in CONSTRAINT_KINDS}
    return constraints


def resolve_order(cfg: RunConfig) -> list[str]:
    """The run order: a topological order of the risks' constraints, ties in the user's order."""
    return topological_order(cfg.risks, risk_constraints(cfg))
