"""``compose search``: how many virtual tokens each risk gets under a total budget, searched with Optuna.

Every trial is a real run (``compose.cli.run.execute``) with the trial's allocation. An allocation is sampled as
one weight per risk in [0, 1] and turned into integer token counts that sum exactly to the budget (largest
remainders, at least ``min_tokens`` each), so every allocation respects the budget by construction. In
multi-objective mode the total is searched too (objectives: composed safety up, total tokens down) and the
result is the Pareto front.

Objective (single): the composed patch's final average safety; when its perplexity exceeds
``fluency_bound`` x the base model's, the trial is penalised by the excess ratio and marked ``fluency_ok=False``.
After every stage the trial reports the average safety of the risks trained so far, so the median pruner
can stop hopeless trials.

Storage: a SQLite file in the output folder by default (re-running continues the study); any SQLAlchemy URL
(e.g. ``postgresql://user@host/db``) lets several machines search one study; ``optuna-dashboard URL`` reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import math
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import sqlalchemy.exc
from optuna.visualization import matplotlib as ov

from compose import config as config_mod
from compose.cli.arguments import add_model_arguments, add_out_argument
from compose.cli.config import check_strategy_options, resolve
from compose.cli.run import check_context, execute
from compose.errors import ComposeError
from compose.io import atomic_write_json, atomic_write_text, check_output_dir, mark_output_dir, save_figure
from compose.models import load_model

log = logging.getLogger("compose.search")
SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
REPLAY_RANGE = (0.0, 0.5)  # --space replay: the replay shares searched


def allocate(weights: dict[str, float], total: int, min_tokens: int = 1) -> dict[str, int]:
    """Integer tokens per risk proportional to ``weights``, each >= ``min_tokens``, summing exactly to ``total``."""
    k = len(weights)
    if total < k * min_tokens:
        raise ComposeError(f"budget {total} is smaller than {k} risks x {min_tokens} token(s) each; "
                           f"give a budget of at least {k * min_tokens}")
    spare = total - k * min_tokens
    norm = sum(weights.values())
    shares = {r: (w / norm if norm > 0 else 1 / k) * spare for r, w in weights.items()}
    out = {r: min_tokens + math.floor(s) for r, s in shares.items()}
    left = total - sum(out.values())
    for r in sorted(shares, key=lambda r: shares[r] - math.floor(shares[r]), reverse=True)[:left]:
        out[r] += 1
    return out


def storage_url(url: str | None, out_dir: Path) -> str:
    if url is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(out_dir / 'study.db').resolve()}"
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in SCHEMES:
        raise ComposeError(f"unknown storage URL '{url}'; use an SQLAlchemy URL with one of the schemes "
                           f"{', '.join(SCHEMES)} (e.g. sqlite:///study.db, postgresql://user@host/db)")
    return url


@contextlib.contextmanager
def _creation_lock(url: str):
    """Serialise schema creation of a SQLite study between processes (Optuna's migration races otherwise)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    lock = Path(url[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(url: str, name: str, settings: dict, multi: bool, seed: int | None = None, prune: bool = True):
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    # seeded by the run seed: a search re-run from scratch proposes the same allocations
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True) if not multi else \
        optuna.samplers.NSGAIISampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    for attempt in range(5):  # two machines creating one server study at once: the loser retries
        try:
            with _creation_lock(url):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                            sampler=sampler, pruner=pruner, load_if_exists=True)
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            if attempt == 4 or not _transient(exc):
                raise ComposeError(f"cannot open study storage '{url}': {_first_line(exc)}") from exc
            time.sleep(1 + attempt)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError) as exc:
            # not a study database (a garbage file), an unreachable server, a driver that is not installed
            raise ComposeError(f"cannot open study storage '{url}': {_first_line(exc)}; give a study database "
                               f"(sqlite:///PATH or a server URL) that compose created, or another --storage") from exc
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        diff = [k for k in settings if saved.get(k) != settings[k]]
        raise ComposeError(f"study '{name}' was created for other settings ({', '.join(diff)}: "
                           f"{', '.join(str(saved.get(k)) for k in diff)}); use another --study name")
    return study


def _transient(exc) -> bool:
    """True for errors of two processes creating one study at once (the loser retries), not for a bad storage."""
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "locked" in str(exc)


def _first_line(exc) -> str:
    """The first line of a database error, without SQLAlchemy's '(module.Error)' prefix."""
    line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return line.split(") ", 1)[1] if line.startswith("(") and ") " in line else line


def search(base: config_mod.RunConfig, budget: int, trials: int, out_dir, storage: str | None = None,
           study_name: str | None = None, min_tokens: int = 1, fluency_bound: float = 1.25,
           multi_objective: bool = False, space: tuple[str, ...] = (), loaded=None, prune: bool = True,
           total_trials: int | None = None) -> dict:
    """Run ``trials`` more trials of the study, or, with ``total_trials``, until the study holds that many (trials
    of earlier runs and of other processes count: an interrupted search re-run adds only the missing ones);
    returns the best allocation(s) and the trials table. ``prune``:
    stop a trial after a stage whose mean safety so far is below the median of earlier trials at that stage
    (that judges an allocation by its first risks only, before the later ones have trained)."""
    out_dir = Path(out_dir)
    equal = allocate({r: 1.0 for r in base.risks}, budget, min_tokens)  # refuses an impossible budget early
    config_mod.check_token_counts(equal)
    url = storage_url(storage, out_dir)
    name = study_name or f"{base.strategy}-{'-'.join(base.risks)}-{budget}"
    settings = {"risks": base.risks, "strategy": base.strategy, "budget": budget, "model": base.model,
                "preset": base.preset, "seed": base.seed, "multi_objective": multi_objective, "space": sorted(space)}
    if "replay" in space:
        replay_setting(base, REPLAY_RANGE[1])  # refused before the study opens when the strategy has no replay
    study = open_study(url, name, settings, multi_objective, seed=base.seed, prune=prune)
    if not study.trials:  # the first trial of a study is the equal split, the baseline every allocation is read against
        params = {f"w_{r}": 1.0 for r in base.risks} | ({"total": budget} if multi_objective else {})
        study.enqueue_trial(params, user_attrs={"equal_split": True})

    def objective(trial: optuna.Trial):
        total = trial.suggest_int("total", len(base.risks) * min_tokens, budget) if multi_objective else budget
        weights = {r: trial.suggest_float(f"w_{r}", 0.0, 1.0) for r in base.risks}
        tokens = allocate(weights, total, min_tokens)
        changes = {"tokens": tokens}
        train = base.train
        if "beta" in space:
            train = _replace(train, beta=trial.suggest_float("beta", 0.05, 0.5, log=True))
        if "lr" in space:
            lr = trial.suggest_float("sft_lr", 1e-3, 1e-2, log=True)
            train = _replace(train, sft_lr=lr)
        if "replay" in space:
            changes.update(replay_setting(base, trial.suggest_float("replay", *REPLAY_RANGE)))
        cfg = _replace(base, train=train, **changes)
        trial.set_user_attr("tokens", tokens)
        same = _same_run(study, trial, cfg)
        if same is not None:  # the weights map to a run already done (training is deterministic): reuse it
            for k in ("safety", "perplexity_ratio", "fluency_ok", "run_dir"):
                if k in same.user_attrs:
                    trial.set_user_attr(k, same.user_attrs[k])
            trial.set_user_attr("same_as", same.number)
            return tuple(same.values) if multi_objective else same.value
        run_dir = out_dir / "trials" / f"{name}-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))

        def on_row(matrix):
            value = None if multi_objective else intermediate_value(matrix)
            if value is None:
                return
            step = len(matrix.rows) - 1
            trial.report(value, step=step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"stage {step}: safety {value:.3f} below the median")

        results = execute(cfg, run_dir, loaded=loaded, on_row=on_row)
        safety = results["summary"]["final_average_safety"]["value"]
        ppl = results["summary"]["final_fluency"]["value"] or {}
        base_ppl = results["base_fluency"].get("perplexity")
        ratio = ppl.get("perplexity", float("nan")) / base_ppl if base_ppl else float("nan")
        ok = not (ratio > fluency_bound)
        trial.set_user_attr("safety", safety)
        trial.set_user_attr("perplexity_ratio", ratio)
        trial.set_user_attr("fluency_ok", ok)
        value = safety if ok else safety - (ratio - fluency_bound)
        return (value, sum(tokens.values())) if multi_objective else value

    callbacks = []
    if total_trials is not None:
        started = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
        trials = max(0, total_trials - len(started))
        callbacks.append(optuna.study.MaxTrialsCallback(total_trials, states=None))  # other processes' trials too
    if trials:  # the model is loaded only when there are trials to run
        loaded = loaded or load_model(base.model, base.dtype)
        check_context(_replace(base, tokens=equal), loaded)  # the whole budget must fit the model's context
        study.optimize(objective, n_trials=trials, catch=(RuntimeError,), gc_after_trial=True, callbacks=callbacks)
    return summarize(study, base, out_dir, multi_objective)


def intermediate_value(matrix) -> float | None:
    """What a trial reports to the pruner after a row: the mean safety of the risks trained so far (for
    specialists: each on its own risk), or None for the base row and for the last row (a finished run is
    scored by the objective, never pruned)."""
    rows = [r for r in matrix.rows if r.kind != "base"]
    if not rows or rows[-1].kind == "composed":
        return None
    if rows[-1].kind == "specialist":  # each specialist on its own risk: what the composed patch starts from
        own = [r.scores[r.trained] for r in rows if r.kind == "specialist"]
        return sum(own) / len(own)
    trained = [r.trained for r in rows if r.trained]
    if set(trained) >= set(matrix.risks):
        return None
    trained = trained or matrix.risks
    return sum(rows[-1].scores[r] for r in trained) / len(trained)


def _same_run(study, trial, cfg: config_mod.RunConfig):
    """A completed trial whose run had exactly ``cfg``'s settings, or None."""
    digest = cfg.digest()
    trial.set_user_attr("config_digest", digest)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("config_digest") == digest:
            return t
    return None


def replay_setting(base: config_mod.RunConfig, share: float) -> dict:
    """The run settings of a replay ``share`` for ``base``'s strategy, checked by that strategy's options as a
    ``--option`` would be (a strategy without replay is refused)."""
    try:
        return check_strategy_options(base.strategy, base.to_dict(), {"--space": {"replay": share}})
    except ComposeError as exc:
        raise ComposeError(f"--space replay: {exc}") from None


def _replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


def summarize(study, base: config_mod.RunConfig, out_dir: Path, multi_objective: bool) -> dict:
    """Write trials.md, best.yaml and the plots; return the best allocation(s)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ComposeError(f"study '{study.study_name}' has no completed trial yet")
    rows = ["| trial | state | tokens | safety | perplexity ratio | fluency ok | value |", "|---|---|---|---|---|---|---|"]
    for t in study.trials:
        tokens = t.user_attrs.get("tokens")
        state = t.state.name.lower() + (f" (= trial {t.user_attrs['same_as']})" if "same_as" in t.user_attrs else "")
        rows.append(f"| {t.number} | {state} | {tokens_flag(tokens) if tokens else ''} | "
                    f"{_f(t.user_attrs.get('safety'))} | {_f(t.user_attrs.get('perplexity_ratio'))} | "
                    f"{t.user_attrs.get('fluency_ok', '')} | "
                    f"{', '.join(_f(v) for v in t.values) if t.values else ''} |")
    best = study.best_trials if multi_objective else [study.best_trial]
    best_tokens = [t.user_attrs["tokens"] for t in best]
    head = (f"# Capacity search: {study.study_name}\n\n{len(done)} completed of {len(study.trials)} trials; "
            f"strategy {base.strategy}, risks {', '.join(base.risks)}.\n\n")
    if multi_objective:
        head += "Pareto front (safety up, tokens down):\n\n" + "\n".join(
            f"- trial {t.number}: `--tokens {tokens_flag(t.user_attrs['tokens'])}` safety {_f(t.values[0])}"
            for t in best) + "\n\n"
    else:
        head += (f"Best: trial {best[0].number}, `--tokens {tokens_flag(best_tokens[0])}`, "
                 f"value {_f(best[0].value)}\n\n")
    equal = _equal_split(done)
    if equal is not None:
        head += (f"Equal split: trial {equal.number}, `--tokens {tokens_flag(equal.user_attrs['tokens'])}`, "
                 f"value {', '.join(_f(v) for v in equal.values)} (same evaluation as every trial)\n\n")
    atomic_write_text(out_dir / "trials.md", head + "\n".join(rows) + "\n")
    cfg = _replace(base, tokens=best_tokens[0])
    cfg.save(out_dir / "best.yaml")
    plots = _plots(study, out_dir, multi_objective)
    summary = {"study": study.study_name, "trials": len(study.trials), "completed": len(done),
               "best": [{"trial": t.number, "tokens": t.user_attrs["tokens"], "values": t.values,
                         "tokens_flag": tokens_flag(t.user_attrs["tokens"])} for t in best],
               "equal_split": None if equal is None else {"trial": equal.number, "tokens": equal.user_attrs["tokens"],
                                                          "values": equal.values},
               "plots": [str(p) for p in plots]}
    atomic_write_json(out_dir / "search.json", summary)
    return summary


def _equal_split(done):
    return next((t for t in done if t.user_attrs.get("equal_split")), None)


def _plots(study, out_dir: Path, multi: bool) -> list[Path]:
    written = []
    makers = [("pareto_front.png", lambda: ov.plot_pareto_front(study, target_names=["safety", "tokens"]))] if multi \
        else [("optimization_history.png", lambda: ov.plot_optimization_history(study)),
              ("param_importances.png", lambda: ov.plot_param_importances(study))]
    for name, make in makers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need >= 2 trials
                log.info(f"skipped {name}: {exc}")
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        path = save_figure(fig, out_dir / name)
        plt.close(fig)
        written.append(path)
    return written


def tokens_flag(tokens: dict) -> str:
    """``{"toxicity": 13, "bias": 11}`` as the ``--tokens`` value ``toxicity=13,bias=11``."""
    return ",".join(f"{r}={n}" for r, n in tokens.items())


def _f(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


# --- CLI -----------------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--risks", help="risks to share the budget, e.g. tox,bias,harm (or `risks:` in --config)")
    p.add_argument("--strategy", help=f"strategy of every trial (default {config_mod.SEARCH_STRATEGY}: each risk owns "
                                      f"a block, so how the tokens are shared matters)")
    add_model_arguments(p)
    p.add_argument("--preset", default=None, help="settings of every trial's run (default quick)")
    p.add_argument("--config", help="YAML run config for every trial (flags override it)")
    p.add_argument("--budget", type=int, required=True, help="total virtual tokens shared by the risks")
    p.add_argument("--min-tokens", type=int, default=1)
    p.add_argument("--trials", type=int, default=20, help="trials to add to the study in this process")
    p.add_argument("--total-trials", type=int, metavar="N",
                   help="instead of --trials: run until the study holds N trials (re-running resumes a search)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study (default: sqlite file in the output folder)")
    p.add_argument("--study", help="study name (default: STRATEGY-RISKS-BUDGET)")
    p.add_argument("--fluency-bound", type=float, default=1.25,
                   help="max perplexity of the composed patch relative to the base model")
    p.add_argument("--multi-objective", action="store_true", help="safety vs total tokens: a Pareto front")
    p.add_argument("--no-prune", action="store_true",
                   help="run every trial to the end (the median pruner judges a trial by its first stages)")
    p.add_argument("--space", default="", help="also search: beta, lr, replay (comma-separated)")
    p.add_argument("--train-limit", type=int)
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--seed", type=int)
    add_out_argument(p, "search folder (default runs/search-STRATEGY-RISKS-BUDGET)")
    p.add_argument("--force", action="store_true", help="write into an --out folder that is not a search folder")


def main(args) -> int:
    for flag, value in (("--trials", args.trials), ("--total-trials", args.total_trials),
                        ("--min-tokens", args.min_tokens)):
        if value is not None and value < 1:
            raise ComposeError(f"{flag} must be >= 1, got {value}")
    if not 0 < args.fluency_bound < math.inf:
        raise ComposeError(f"--fluency-bound must be a positive number (a perplexity ratio, e.g. 1.25), "
                           f"got {args.fluency_bound}")
    space = tuple(s for s in args.space.split(",") if s)
    bad = [s for s in space if s not in ("beta", "lr", "replay")]
    if bad:
        raise ComposeError(f"unknown --space entry '{bad[0]}'; valid: beta, lr, replay")
    file = config_mod.load_config_file(args.config) if args.config else {}
    strategy = args.strategy or file.get("strategy") or config_mod.SEARCH_STRATEGY
    base = resolve(file, risks=args.risks, strategy=strategy, model=args.model, dtype=args.dtype,
                              preset=args.preset, seed=args.seed, train_limit=args.train_limit,
                              eval_limit=args.eval_limit)
    out = Path(args.out or f"runs/search-{base.strategy}-{'-'.join(base.risks)}-{args.budget}")
    check_output_dir(out, "--out", command="search", force=args.force,
                     inputs=[args.config] if args.config else [],
                     owned=lambda p: (p / "search.json").is_file() or (p / "study.db").is_file())  # older searches
    summary = search(base, args.budget, args.trials, out, args.storage, args.study, args.min_tokens,
                     args.fluency_bound, args.multi_objective, space, prune=not args.no_prune,
                     total_trials=args.total_trials)
    mark_output_dir(out, "search")
    for b in summary["best"]:
        print(f"best (trial {b['trial']}): --tokens {b['tokens_flag']}  values {b['values']}")
    if summary["equal_split"]:
        e = summary["equal_split"]
        print(f"equal split (trial {e['trial']}): --tokens {tokens_flag(e['tokens'])}  values {e['values']}")
    print(f"{summary['completed']} completed of {summary['trials']} trials; see {out}/trials.md, {out}/best.yaml")
    return 0
