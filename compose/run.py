"""``compose run``: train and compose patches for several risks with a strategy, measuring forgetting.

A run folder holds everything needed to reproduce and read the run::

    runs/NAME/
      config.yaml            the resolved settings (preset < config file < flags)
      data/RISK.json         the training examples and preference pairs built for each risk
      stages/NN-NAME/        one finished stage: patch/ (a patch directory), eval.json, stage.json (written last)
      specialists/RISK/      single-risk patches (concatenated, merged), reused when already built
      replay.json            the replay buffer (replay strategies)
      patch/                 the final composed patch
      forgetting.json        the forgetting matrix with its summary figures
      report.md, forgetting.png, results.json (written last: the run is finished)

Resuming: a stage whose ``stage.json`` exists is loaded, not redone; anything else is redone from scratch. A
finished run whose report files are missing gets them rebuilt. One process at a time works in a run folder
(``.lock`` names it; a lock whose process is gone is taken over), and ``--output-dir`` must be new, empty or a
run folder (``--force`` otherwise).
Training data, specialists and base-model evaluations are also cached under ``$COMPOSE_CACHE`` (keyed by
every setting they depend on), so runs of several strategies on the same risks share them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import torch

from compose import config as config_mod
from compose.artifact import patch_matrix, save_patch
from compose.errors import ComposeError
from compose.evaluate import DATA_HELP, parse_data_args
from compose.forgetting import ForgettingMatrix
from compose.io import FolderLock, atomic_write_json, check_output_dir, claim_output_dir, mark_output_dir
from compose.models import cache_dir, load_model
from compose.patch import Segment, attach_patch, count_parameters, get_prompt, set_prompt
from compose.schema import RESULTS, STAGE, read_checked, read_evals
from compose.train import DecisionProbe, Reference, train_dpo, train_sft

log = logging.getLogger("compose.run")

# Part of every cache key (teacher data, base evaluations, specialists): bump it when a change to the code that
# builds training data or computes metrics makes earlier cached results stale.
CACHE_VERSION = "3"
REPORT_FILES = ("report.md", "forgetting.png")


class Stage:
    """One finished-or-not stage of a run, stored under ``stages/NN-NAME``."""

    def __init__(self, ctx: RunContext, index: int, name: str):
        self.ctx, self.index, self.name = ctx, index, name
        self.dir = ctx.out_dir / "stages" / f"{index:02d}-{name}"
        self.start = time.perf_counter()

    @property
    def done(self) -> bool:
        return (self.dir / "stage.json").is_file()

    def restore(self, model, kind: str = "stage", trained: str | None = "") -> bool:
        """Load a finished stage's patch into ``model`` and its row into the matrix; False when not finished."""
        if not self.done:
            shutil.rmtree(self.dir, ignore_errors=True)  # a stage killed half-way is redone from scratch
            self.start = time.perf_counter()
            return False
        remedy = f"delete {self.dir} to redo the stage"
        info = read_checked(self.dir / "stage.json", STAGE, "stage marker", remedy)
        evals = read_evals(self.dir / "eval.json", "stage evaluation", remedy)
        weights, _ = patch_matrix(self.dir / "patch")
        set_prompt(model, weights)
        self.ctx.add_row(self.name, evals, kind, self._trained(trained), info.get("seconds"))
        log.info(f"stage {self.index} ({self.name}): finished earlier, loaded from {self.dir}")
        return True

    def _trained(self, trained):
        return self.name if trained == "" else trained

    def finish(self, model, segments: list[Segment], training: dict, kind: str = "stage",
               trained: str | None = "") -> None:
        """Evaluate the stage's model on every risk, then write the patch, evaluation and marker (last)."""
        self.ctx.mark(f"{self.name}: trained")
        evals = self.ctx.evaluate(model, desc=f"evaluating after {self.name}")
        self.ctx.mark(f"{self.name}: evaluated")
        seconds = time.perf_counter() - self.start
        self.ctx.save_patch(model, self.dir / "patch", segments, f"{self.ctx.run_name}-{self.name}", training, evals)
        atomic_write_json(self.dir / "eval.json", evals)
        self.ctx.add_row(self.name, evals, kind, self._trained(trained), seconds)
        atomic_write_json(self.dir / "stage.json", {"index": self.index, "name": self.name, "seconds": seconds,
                                                    "training": training})


class RunContext:
    """What a strategy works with: the one base model in memory, the risks, their data, stages and the matrix."""

    def __init__(self, cfg: config_mod.RunConfig, out_dir: Path, loaded, order: list[str], on_row=None):
        self.cfg, self.out_dir, self.loaded, self.order = cfg, Path(out_dir), loaded, list(order)
        self.on_row = on_row  # called with the matrix after every row (e.g. to report to an Optuna pruner)
        self.run_name = self.out_dir.name
        self.matrix = ForgettingMatrix(self.order)
        self._risks: dict = {}
        self._data: dict = {}
        self.timings: dict[str, float] = {}
        self.memory: dict[str, float] = {}  # peak resident memory (MiB) so far, after each phase
        self.phases: dict[str, float] = {}  # seconds of each phase, keyed by the mark that ends it
        self._last_mark = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Record the peak memory so far, after handing freed memory back to the system (phases allocate
        tensors of many shapes; without this, glibc keeps the freed pages and each phase starts higher), and the
        seconds since the previous mark: where a run's wall time goes."""
        now = time.perf_counter()
        self.phases[phase] = round(now - self._last_mark, 2)
        self._last_mark = now
        _release_memory()
        self.memory[phase] = round(_peak_rss_mb(), 1)

    # -- risks and data ----------------------------------------------------------------------------------
    def risk(self, name: str):
        if name not in self._risks:
            from risks import get_risk

            options = {"samples": self.cfg.samples, "max_new_tokens": self.cfg.max_new_tokens,
                       "seed": self.cfg.seed}
            self._risks[name] = get_risk(name, data=self.cfg.data.get(name), **options)
        return self._risks[name]

    def data(self, name: str):
        """The risk's training data, built once from the base model (cached across runs)."""
        from compose.data import TrainingData, build_training_data

        if name in self._data:
            return self._data[name]
        local = self.out_dir / "data" / f"{name}.json"
        key = self._cache_key("model", "dtype", "train_limit", "retain_limit", "max_new_tokens", "samples", "seed",
                              "margin", "min_chosen_safety", suffix="-" + self._data_key(name))
        cached = cache_dir() / "data" / f"{self.loaded.fingerprint.split(':')[-1]}-{name}-{key}.json"
        for path in (local, cached):
            if path.is_file():
                data = TrainingData.load(path)
                break
        else:
            start = time.perf_counter()
            torch.manual_seed(self.cfg.seed)
            data = build_training_data(self.risk(name), self.loaded.model, self.loaded.tokenizer, split="train",
                                       limit=self.cfg.train_limit, retain_limit=self.cfg.retain_limit,
                                       margin=self.cfg.margin, min_chosen_safety=self.cfg.min_chosen_safety,
                                       desc=f"building {name} data")
            self.timings[f"data/{name}"] = time.perf_counter() - start
            data.save(cached)
        if not local.is_file():
            data.save(local)
        self._data[name] = data
        log.info(f"{name} data: {len(data.sft)} SFT examples, {len(data.pairs)} pairs ({_stats(data.stats)})")
        return data

    def _cache_key(self, *settings: str, suffix: str = "") -> str:
        """Key of a cached result: the cache version and a hash of the settings it depends on."""
        return f"v{CACHE_VERSION}-{self.cfg.digest(*settings)}{suffix}"

    def _data_key(self, name: str) -> str:
        import hashlib
        import json

        risk = self.risk(name)
        src = {"data": self.cfg.data.get(name), "teacher": risk.teacher.describe()}
        return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()[:8]

    # -- patches and training ----------------------------------------------------------------------------
    def new_patch(self, tokens: int, init_text: str | None = None, init: torch.Tensor | None = None):
        return attach_patch(self.loaded.model, self.loaded.tokenizer, num_tokens=tokens,
                            init_text=init_text or "Generate safe responses.", init=init)

    @staticmethod
    def shared_segments(tokens: int, risks: list[str]) -> list[Segment]:
        """Segments of a patch trained on several risks together: every risk uses every token."""
        return [Segment(r, 0, tokens) for r in risks]

    def train(self, model, sft: list[dict], pairs: list[dict], reference: Reference | None = None,
              frozen_rows: slice | None = None, desc: str = "training") -> dict:
        # held back from training and watched: does the patch take the teacher's decision on risk prompts it
        # never saw, and keep the base model's answer on benign ones?
        held_out = {source: held_back(sft, self.cfg.train.probe_examples, source) for source in ("risk", "retain")}
        held = {e["prompt"] for examples in held_out.values() for e in examples}
        sft = [e for e in sft if e["prompt"] not in held]
        pairs = [p for p in pairs if p["prompt"] not in held]
        log.info(f"{desc}: {len(sft)} SFT examples, {len(pairs)} pairs, {len(held)} held back to watch the decision")
        torch.manual_seed(self.cfg.seed)
        watchers = [DecisionProbe(model, self.loaded.tokenizer, examples, name=source)
                    for source, examples in held_out.items() if examples]
        s = train_sft(model, self.loaded.tokenizer, sft, self.cfg.train, frozen_rows=frozen_rows, desc=desc,
                      probe=watchers)
        if self.cfg.train.dpo_reference == "sft" and s.steps:
            # the patch as SFT left it (with any frozen blocks, in place): DPO refines the SFT policy. Against the
            # base model instead, the risk pairs are already won after SFT and only the retain pairs pull, which
            # undoes what SFT taught (measured: the refusal's first-token probability 0.77 -> 0.22).
            reference = Reference(prefix=get_prompt(model))
        d = train_dpo(model, self.loaded.tokenizer, pairs, self.cfg.train, reference=reference,
                      frozen_rows=frozen_rows, desc=desc)
        if d.steps:
            d.probes = [w.measure(s.steps + d.steps) for w in watchers]  # the decision after DPO too
        for r in (s, d):
            log.info(f"  {r.summary()}")
        return {"sft": s.to_dict(), "dpo": d.to_dict()}

    def save_patch(self, model, path: Path, segments, name: str, training: dict | None, evals: dict | None):
        metrics = {r: {"safety": m["safety"], "raw": m["raw"]} for r, m in (evals or {}).items()}
        constraints = risk_constraints(self.cfg)
        cons = {k: sorted({x for r in {s.risk for s in segments} for x in constraints[r][k]})
                for k in config_mod.CONSTRAINT_KINDS}
        save_patch(model, path, name=name, segments=segments, base_model=self.cfg.model,
                   fingerprint=self.loaded.fingerprint, training={"strategy": self.cfg.strategy,
                                                                  "preset": self.cfg.preset, **self.cfg.train.to_dict(),
                                                                  "stages": training or {}},
                   metrics=metrics, **cons)

    # -- evaluation and the matrix -----------------------------------------------------------------------
    def evaluate(self, model, desc: str = "evaluating", risks: list[str] | None = None) -> dict:
        """Evaluate ``model`` on ``risks`` (default: every risk of the run)."""
        from compose.evaluate import evaluate_risks

        log.info(desc)
        results = evaluate_risks(model, self.loaded.tokenizer, [self.risk(r) for r in risks or self.order],
                                 limit=self.cfg.eval_limit)
        return {r: m.to_dict() for r, m in results.items()}

    def base_row(self) -> None:
        """Row 0: the unpatched model (cached across runs with the same evaluation settings)."""
        key = self._cache_key("model", "dtype", "eval_limit", "max_new_tokens", "samples", "seed", "data")
        path = cache_dir() / "evals" / f"{self.loaded.fingerprint.split(':')[-1]}-{key}.json"
        cached = read_evals(path, "cached evaluation", "delete it to rebuild the cache") if path.is_file() else {}
        missing = [r for r in self.order if r not in cached]
        start = time.perf_counter()
        if missing:
            from compose.evaluate import evaluate_risks

            results = evaluate_risks(self.loaded.model, self.loaded.tokenizer, [self.risk(r) for r in missing],
                                     limit=self.cfg.eval_limit)
            cached.update({r: m.to_dict() for r, m in results.items()})
            atomic_write_json(path, cached)
        evals = {r: cached[r] for r in self.order}
        atomic_write_json(self.out_dir / "stages" / "00-base.json", evals)
        self.add_row("base", evals, "base", None, time.perf_counter() - start)

    def add_row(self, name: str, evals: dict, kind: str, trained: str | None, seconds: float | None) -> None:
        fluency = {f"{r}_perplexity": m["fluency"].get("perplexity") for r, m in evals.items()
                   if m.get("fluency", {}).get("perplexity") is not None}
        if fluency:
            fluency["perplexity"] = sum(fluency.values()) / len(fluency)
        self.matrix.add_row(name, {r: evals[r]["safety"] for r in self.order},
                            raw={r: evals[r]["raw"] for r in self.order},
                            directions={r: evals[r]["directions"] for r in self.order},
                            fluency=fluency, seconds=seconds, kind=kind, trained=trained,
                            intervals={r: evals[r].get("intervals", {}) for r in self.order},
                            items={r: evals[r].get("items", {}) for r in self.order},
                            digests={r: evals[r].get("prompts_digest", "") for r in self.order})
        if self.on_row is not None:
            self.on_row(self.matrix)

    def specialist(self, risk: str) -> torch.Tensor:
        """A single-risk patch trained from the base model (reused from the run folder or the cache)."""
        local = self.out_dir / "specialists" / risk
        key = self._cache_key("model", "dtype", "train_limit", "retain_limit", "max_new_tokens", "samples", "seed",
                              "margin", "min_chosen_safety", "train", "eval_limit", "data", suffix=self._data_key(risk))
        cached = cache_dir() / "specialists" / f"{self.loaded.fingerprint.split(':')[-1]}-{risk}-" \
                                               f"{self.cfg.tokens[risk]}-{key}"
        for path in (local, cached):
            if (path / "eval.json").is_file():
                remedy = f"delete {path} to train the specialist again"
                evals = read_evals(path / "eval.json", "specialist evaluation", remedy)
                info = read_checked(path / "stage.json", STAGE, "specialist marker", remedy)
                weights, _ = patch_matrix(path / "patch")
                missing = [r for r in self.order if r not in evals]
                if missing:  # trained by a run of fewer risks: evaluate it on this run's other risks too
                    evals.update(self.evaluate(self.new_patch(weights.shape[0], init=weights), risks=missing,
                                               desc=f"evaluating the {risk} specialist on {', '.join(missing)}"))
                    atomic_write_json(path / "eval.json", evals)
                self.add_row(f"{risk} specialist", evals, "specialist", risk, info.get("seconds"))
                if path != local:
                    shutil.copytree(path, local, dirs_exist_ok=True)
                log.info(f"{risk} specialist: reused from {path}")
                return weights
        start = time.perf_counter()
        model = self.new_patch(self.cfg.tokens[risk], init_text=self.risk(risk).init_text)
        data = self.data(risk)
        training = self.train(model, data.sft, data.pairs, desc=f"{risk} specialist")
        self.mark(f"{risk} specialist: trained")
        evals = self.evaluate(model, desc=f"evaluating the {risk} specialist")
        self.mark(f"{risk} specialist: evaluated")
        seconds = time.perf_counter() - start
        self.save_patch(model, cached / "patch", [Segment(risk, 0, self.cfg.tokens[risk])],
                        f"{risk}-specialist", training, evals)
        atomic_write_json(cached / "eval.json", evals)
        atomic_write_json(cached / "stage.json", {"seconds": seconds, "training": training})
        shutil.copytree(cached, local, dirs_exist_ok=True)
        self.add_row(f"{risk} specialist", evals, "specialist", risk, seconds)
        return get_prompt(model)

    def composed_row(self, model, segments, info: dict) -> None:
        stage = Stage(self, len(self.order) + 1, "composed")
        if not stage.restore(model, kind="composed", trained=None):
            stage.finish(model, segments, info, kind="composed", trained=None)

    def stage(self, index: int, name: str) -> Stage:
        return Stage(self, index, name)


def held_back(sft: list[dict], n: int, source: str = "risk") -> list[dict]:
    """The last ``n`` examples of ``source`` in ``sft`` (at most a fifth of them), kept out of training to be
    watched."""
    examples = [e for e in sft if e.get("source") == source]
    return examples[len(examples) - min(n, len(examples) // 5):] if n > 0 else []


def _stats(stats: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def risk_constraints(cfg: config_mod.RunConfig) -> dict[str, dict]:
    """Ordering constraints of the run's risks: the plugins' metadata plus the run config's additions, every risk
    named canonically (a plugin may name others by alias)."""
    from compose.graph import canonical_name
    from risks import get_risk

    constraints = {}
    for r in cfg.risks:
        risk = get_risk(r)
        extra = cfg.constraints.get(r, {})
        constraints[r] = {k: [canonical_name(x) for x in getattr(risk, k, ()) or ()] + list(extra.get(k, []))
                          for k in config_mod.CONSTRAINT_KINDS}
    return constraints


def resolve_order(cfg: config_mod.RunConfig) -> list[str]:
    """The run order: a topological order of the risks' constraints, ties in the user's order."""
    from compose.graph import resolve_order as topo

    return topo(cfg.risks, risk_constraints(cfg))


def auto_order(cfg: config_mod.RunConfig, out_dir: Path, loaded, given: list[str]) -> list[str]:
    """Choose the order from measured interference: train (or reuse) every single-risk specialist, evaluate
    it on every risk, and pick the allowed order with the least predicted forgetting (``compose.graph``).
    Writes ``order.json`` (transfer matrix, orders considered, reasons) and ``order.png`` into the run folder.
    """
    from compose.graph import draw_graph, interference_graph, interference_order

    probe = RunContext(cfg, out_dir, loaded, given)
    probe.base_row()
    for r in given:
        probe.specialist(r)
    base = probe.matrix.rows[0].scores
    transfer = {row.trained: {r: row.scores[r] - base[r] for r in given} for row in probe.matrix.rows[1:]}
    order, explanation = interference_order(given, transfer, risk_constraints(cfg))
    atomic_write_json(out_dir / "order.json", {"transfer": transfer, **explanation,
                                               "transfer_definition": "transfer[a][b] = S[specialist a][b] - "
                                                                      "S[base][b] (negative = interference)"})
    draw_graph(interference_graph(given, transfer), out_dir / "order.png",
               title="interference (edge a->b: training a lowers b's safety)")
    log.info(f"auto order: {' -> '.join(order)} (predicted forgetting "
             f"{explanation['chosen']['predicted_forgetting']:.3f}; given order "
             f"{explanation['default_order']['predicted_forgetting']:.3f})")
    return order


def execute(cfg: config_mod.RunConfig, out_dir, loaded=None, on_row=None, force: bool = False) -> dict:
    """Run ``cfg`` into ``out_dir`` (resuming what is finished there); returns the results summary.

    ``out_dir`` must be new, empty or a run folder, unless ``force``; it is locked while the run works in it.
    """
    created = not Path(out_dir).exists()
    out_dir = claim_output_dir(out_dir, "run", "--output-dir", force=force,
                               owned=lambda p: (p / "config.yaml").is_file())  # run folders from before markers
    with FolderLock(out_dir, "run folder"):
        try:
            _check_resume(cfg, out_dir)
            finished = _finished_results(out_dir)
            if finished is not None:
                return finished
            return _run(cfg, out_dir, loaded, on_row)
        except BaseException:
            if created and not _started(out_dir):  # refused before it began: leave nothing behind
                shutil.rmtree(out_dir, ignore_errors=True)
            raise


def _run(cfg: config_mod.RunConfig, out_dir: Path, loaded, on_row) -> dict:
    """The run itself; outputs are written patch first and results.json last, so a killed run is resumed."""
    from strategies import get_strategy

    start = time.perf_counter()
    loaded = loaded or load_model(cfg.model, cfg.dtype)
    check_context(cfg, loaded)
    _check_data_files(cfg)
    order = resolve_order(cfg)
    strategy = get_strategy(cfg.strategy)
    cfg.save(out_dir / "config.yaml")  # only once the settings are known to work with this model
    if cfg.order == "auto":
        order = auto_order(cfg, out_dir, loaded, order)
    ctx = RunContext(cfg, out_dir, loaded, order, on_row)
    log.info(f"run {out_dir}: strategy {cfg.strategy}, order {' -> '.join(order)}, tokens "
             f"{', '.join(f'{r}={cfg.tokens[r]}' for r in order)}, preset {cfg.preset}")
    ctx.mark("model loaded")
    for r in order:
        ctx.data(r)
    ctx.mark("training data")
    ctx.base_row()
    ctx.mark("base evaluation")
    model, segments = strategy.run(ctx)
    evals_last = _last_evals(out_dir)
    ctx.save_patch(model, out_dir / "patch", segments, f"{out_dir.name}", {"strategy": cfg.strategy}, evals_last)
    ctx.matrix.save(out_dir / "forgetting.json")
    params = count_parameters(model)
    results = {"run": out_dir.name, "strategy": cfg.strategy, "order": order, "tokens": cfg.tokens,
               "model": cfg.model, "fingerprint": loaded.fingerprint, "parameters": params,
               "summary": ctx.matrix.summary(), "base_fluency": ctx.matrix.rows[0].fluency, "wall_seconds": time.perf_counter() - start,
               "data_seconds": ctx.timings, "peak_rss_mb": _peak_rss_mb(),
               "peak_rss_mb_after": ctx.memory, "threads": torch.get_num_threads(), "config": cfg.to_dict()}
    _write_run_report(ctx.matrix, out_dir, results)
    ctx.mark("report")
    ctx.phases["model loaded"] = round(loaded.load_seconds, 2)  # before the context existed: the load itself
    results["phases"] = ctx.phases
    atomic_write_json(out_dir / "results.json", results)
    return results


def _write_run_report(matrix: ForgettingMatrix, out_dir: Path, results: dict) -> None:
    """report.md and forgetting.png of a run, from its matrix and results (also for a run finished earlier)."""
    from compose.report import write_report

    peak = results.get("peak_rss_mb")
    write_report(matrix, out_dir, title=f"{results['strategy']}: {', '.join(results['order'])} on {results['model']}",
                 extra={"parameters": results["parameters"], "tokens": results["tokens"],
                        "wall_seconds": results["wall_seconds"], "peak_memory_mb": None if peak is None else round(peak),
                        "preset": results.get("config", {}).get("preset")})


def _finished_results(out_dir: Path) -> dict | None:
    """The results of a run that finished in ``out_dir`` (its report rebuilt where missing), or None."""
    path = out_dir / "results.json"
    if not (path.is_file() and (out_dir / "patch").is_dir() and (out_dir / "forgetting.json").is_file()):
        return None
    results = read_checked(path, RESULTS, "run results", "delete it to rebuild the run's outputs")
    missing = [name for name in REPORT_FILES if not (out_dir / name).is_file()]
    if missing:
        log.info(f"run {out_dir}: finished earlier; rebuilding {', '.join(missing)}")
        _write_run_report(ForgettingMatrix.load(out_dir / "forgetting.json"), out_dir, results)
    else:
        log.info(f"run {out_dir}: finished earlier; its results are kept (delete results.json to redo the report)")
    return results


def _check_data_files(cfg: config_mod.RunConfig) -> None:
    """Read the user's data of every risk (``--data``) before the run starts, so a bad file is refused at once."""
    from risks import get_risk

    for risk, sources in cfg.data.items():
        get_risk(risk, data=sources).prompts("train", 1)


def check_context(cfg: config_mod.RunConfig, loaded) -> None:
    """Refuse a patch that leaves no room for the training examples in the model's context."""
    from compose.generation import context_length

    context = context_length(loaded.model)
    if context is not None and cfg.total_tokens + cfg.train.max_length > context:
        raise ComposeError(f"the patch's {cfg.total_tokens} virtual tokens plus train.max_length "
                           f"{cfg.train.max_length} exceed the {context}-token context of model {cfg.model}; "
                           f"lower --tokens (at most {context - cfg.train.max_length} in all) or train.max_length")


def _release_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): the allocator keeps its pages, only the peak figure is recorded
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _last_evals(out_dir: Path) -> dict | None:
    stages = sorted((out_dir / "stages").glob("*/eval.json"))
    return read_evals(stages[-1], "stage evaluation", f"delete {stages[-1].parent} to redo it") if stages else None


def _started(out_dir: Path) -> bool:
    """True once a run in ``out_dir`` has produced anything (a start that failed early has not)."""
    return any((out_dir / name).exists() for name in ("data", "stages", "specialists", "order.json"))


def _with_new_defaults(saved: dict) -> dict:
    """A saved config as today's code reads it: a setting added since it was written takes its default, the value
    that keeps the behaviour the run had (a new setting's default must), so adding one does not block resuming."""
    defaults = config_mod.RunConfig(risks=[]).to_dict()
    out = {**defaults, **saved}
    if isinstance(saved.get("train"), dict):
        out["train"] = {**defaults["train"], **saved["train"]}
    return out


def _check_resume(cfg: config_mod.RunConfig, out_dir: Path) -> None:
    saved = out_dir / "config.yaml"
    if not saved.is_file() or not _started(out_dir):  # nothing done with those settings: the new ones replace them
        return
    old = _with_new_defaults(config_mod.load_config_file(saved))
    new = cfg.to_dict()
    changed = [k for k in new if old.get(k) != new[k]]
    if changed:
        raise ComposeError(f"output folder '{out_dir}' holds a run with other settings ({', '.join(changed)} "
                           f"differ); resume it with the same settings or choose another --output-dir")


# --- CLI -----------------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from compose.cli import add_model_arguments

    p.add_argument("--risks", help="comma-separated risks in the order to train them, e.g. tox,bias,harm")
    p.add_argument("--strategy", help="sequential, sequential-replay (default), stacked, concatenated, merged, joint")
    add_model_arguments(p)
    p.set_defaults(model=None, dtype=None)
    p.add_argument("--preset", help="smoke (seconds), quick (default, ~20 min on 2 CPU cores, 200 eval prompts per risk), paper (GPU)")
    p.add_argument("--tokens", help="virtual tokens per risk, e.g. tox=20,bias=20,harm=10, or one number for all")
    p.add_argument("--replay", type=float, help="share of each later stage's data replayed from earlier risks")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="one run per seed into OUTPUT_DIR/seedS, then seeds.md / seeds.json / seeds.png: mean and "
                        "spread over seeds and paired tests pooled over seeds (replaces --seed)")
    p.add_argument("--order", choices=["given", "auto"], help="given: dependency graph, ties in --risks order")
    p.add_argument("--merge", choices=["average", "task-arithmetic", "ties", "dare-ties"],
                   help="merge method of the merged strategy")
    p.add_argument("--train-limit", type=int, help="training prompts per risk")
    p.add_argument("--eval-limit", type=int, help="evaluation prompts per risk")
    p.add_argument("--data", action="append", default=[], metavar="RISK[:SPLIT]=PATH", help=DATA_HELP)
    p.add_argument("--config", help="YAML file with the same settings (flags override it)")
    p.add_argument("--output-dir", help="run folder (default runs/STRATEGY-RISKS-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir with its saved config")
    p.add_argument("--force", action="store_true",
                   help="write into an --output-dir that is not empty and is not a run folder")


def main(args) -> int:
    file = {}
    if args.resume:
        if not args.output_dir or not (Path(args.output_dir) / "config.yaml").is_file():
            raise ComposeError("--resume needs --output-dir pointing at an earlier run folder (with config.yaml)")
        file = config_mod.load_config_file(Path(args.output_dir) / "config.yaml")
    if args.config:
        file = {**file, **config_mod.load_config_file(args.config)}
    flags = {"risks": args.risks, "strategy": args.strategy, "model": args.model, "dtype": args.dtype,
             "preset": args.preset, "tokens": args.tokens, "replay": args.replay, "seed": args.seed,
             "order": args.order, "train_limit": args.train_limit, "eval_limit": args.eval_limit}
    if args.merge:
        flags["merge"] = {**(file.get("merge") or {"weights": None, "density": 0.5}), "method": args.merge}
    if args.data:
        flags["data"] = parse_data_args(args.data)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    if seeds and args.seed is not None:
        raise ComposeError("give either --seed or --seeds, not both")
    cfg = config_mod.resolve(file, **flags)
    _check_strategy_settings(cfg, args, file)
    out = Path(args.output_dir or f"runs/{cfg.strategy}-{'-'.join(cfg.risks)}-{cfg.preset}")
    if not seeds:
        results = execute(cfg, out, force=args.force)
        print(summary_table(results, out))
        return 0
    from compose.report import write_seed_summary

    claim_output_dir(out, "run", "--output-dir", force=args.force)
    for seed in seeds:
        log.info(f"seed {seed} of {', '.join(map(str, seeds))}")
        results = execute(dataclasses.replace(cfg, seed=seed), out / f"seed{seed}", force=args.force)
        print(summary_table(results, out / f"seed{seed}"))
    matrices = {seed: ForgettingMatrix.load(out / f"seed{seed}" / "forgetting.json") for seed in seeds}
    written, table = write_seed_summary(matrices, out, title=f"{cfg.strategy}: {', '.join(cfg.risks)}")
    print("\n" + table)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _check_strategy_settings(cfg: config_mod.RunConfig, args, file: dict) -> None:
    """Refuse flags the run's strategy would ignore; warn about such settings in a config file."""
    from strategies import check_settings_used, get_strategy

    flags = {"replay": "--replay" if args.replay is not None else None, "merge": "--merge" if args.merge else None}
    check_settings_used(cfg.strategy, {k: v for k, v in flags.items() if v})
    defaults = config_mod.RunConfig(risks=[])
    for setting in ("replay", "merge"):
        if file.get(setting, getattr(defaults, setting)) != getattr(defaults, setting) \
                and setting not in get_strategy(cfg.strategy).settings:
            log.warning(f"warning: strategy '{cfg.strategy}' does not use the setting '{setting}' of the config file")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (distinct integers, in the given order)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ComposeError(f"bad --seeds '{text}'; expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ComposeError(f"bad --seeds '{text}'; expected distinct integers, e.g. --seeds 0,1,2")
    return seeds


def summary_table(results: dict, out: Path) -> str:
    """The forgetting matrix as text (safety ± half-width of its 95% interval) and the summary figures."""
    s = results["summary"]
    m = ForgettingMatrix.load(out / "forgetting.json")
    width = max(len(r.name) for r in m.rows) + 2

    def cell(row, risk):
        ci = row.safety_interval(risk)
        return f"{row.scores[risk]:.3f}" + (f" ±{(ci['ci_high'] - ci['ci_low']) / 2:.3f}" if ci else "")

    lines = ["", f"{'':<{width}}" + "".join(f"{r:>16}" for r in m.risks) + f"{'perplexity':>12}"]
    for row in m.rows:
        ppl = row.fluency.get("perplexity")
        lines.append(f"{row.name:<{width}}" + "".join(f"{cell(row, r):>16}" for r in m.risks)
                     + (f"{ppl:>12.2f}" if ppl is not None else f"{'':>12}"))

    def fig(name):
        f = s.get(name, {})
        v = f.get("value")
        if v is None:
            return "n/a"
        spec = ".3f" if name == "final_average_safety" else "+.3f"
        return f"{v:{spec}}" + (f" [{f['ci_low']:{spec}}, {f['ci_high']:{spec}}]" if f.get("ci_low") is not None else "")
    ns = ", ".join(f"{r} n={(m.rows[-1].safety_interval(r) or {}).get('n', '?')}" for r in m.risks)
    lines += ["", f"safety scores (higher safer, ± 95% interval; {ns}); final average safety "
                  f"{fig('final_average_safety')}, forgetting {fig('forgetting')}, BWT {fig('bwt')}, FWT {fig('fwt')}",
              f"patch: {results['parameters']['patch']} parameters ({results['parameters']['share_percent']:.4f}% "
              f"of the model); wall time {results['wall_seconds']:.0f}s",
              f"run folder: {out} (report.md, forgetting.png, patch/)"]
    return "\n".join(lines)


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the comparison of several runs (default: the first run's parent)")
    p.add_argument("--force", action="store_true", help="write the comparison into a folder compose did not create")
    p.add_argument("--baseline", metavar="NAME",
                   help="run (strategy name or folder name, as listed) the others are tested against (default: the "
                        "first run)")


def report_main(args) -> int:
    from compose.report import write_comparison, write_report

    matrices, loaded = {}, []
    out = Path(args.out or Path(args.runs[0]).resolve().parent / "comparison")
    if len(args.runs) > 1:
        check_output_dir(out, "--out", command="report", force=args.force, inputs=args.runs)
    for run in args.runs:
        path = Path(run) / "forgetting.json"
        if not path.is_file():
            raise ComposeError(f"'{run}' is not a finished run folder: forgetting.json is missing")
        results_path = Path(run) / "results.json"
        results = read_checked(results_path, RESULTS, "run results") if results_path.is_file() else {}
        loaded.append((Path(run), ForgettingMatrix.load(path), results))
    strategies = [results.get("strategy") for _, _, results in loaded]
    by_strategy = None not in strategies and len(set(strategies)) == len(strategies)  # else name runs by folder
    for run, matrix, results in loaded:
        name = results["strategy"] if by_strategy else run.name
        if name in matrices:
            name = str(run)
        matrices[name] = matrix
        written = write_report(matrix, run, title=f"{name}: {', '.join(matrix.risks)}",
                               extra={k: results[k] for k in ("parameters", "tokens", "wall_seconds") if k in results})
        print("wrote " + ", ".join(str(p) for p in written))
    if args.baseline is not None and args.baseline not in matrices:
        raise ComposeError(f"--baseline '{args.baseline}' is not one of the runs; valid: {', '.join(matrices)}")
    if len(matrices) > 1:
        from compose.report import comparisons_table, paired_comparisons

        mark_output_dir(out, "report")
        written = write_comparison(matrices, out, title="strategy comparison", baseline=args.baseline)
        print(comparisons_table(paired_comparisons(matrices, args.baseline)))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


__all__ = ["RunContext", "Stage", "execute", "resolve_order"]
