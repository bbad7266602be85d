"""What a strategy works with during a run: ``RunContext`` (the one base model in memory, the run's risks and
their training data, training, evaluation, the forgetting matrix, cached specialists) and ``Stage`` (one stage
folder: restored when finished, else trained, evaluated and saved).

The application (``compose.cli.run``) builds the context from a resolved ``RunConfig``: it looks the risks up
in their registry and hands the instances in, so this module knows nothing of ``risks/`` or ``strategies/``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import json
import logging
import random
import resource
import shutil
import time
from pathlib import Path

import torch

from compose import distributed
from compose.artifact import patch_matrix, save_patch
from compose.config import CONSTRAINT_KINDS, RunConfig
from compose.data import TrainingData, build_training_data
from compose.evaluate import evaluate_risks
from compose.forgetting import ForgettingMatrix
from compose.io import atomic_write_json
from compose.models import cache_dir
from compose.patch import Segment, attach_patch, get_prompt, set_prompt
from compose.schema import STAGE, Field, read_checked, read_evals
from compose.train import DecisionProbe, Reference, train_dpo, train_sft

log = logging.getLogger("compose.run")

# Part of every cache key (teacher data, base evaluations, specialists): bump it when a change to the code that
# builds training data or computes metrics makes earlier cached results stale.
CACHE_VERSION = "4"


class Stage:
    """One finished-or-not stage of a run: by default ``stages/NN-NAME`` in the run folder; a specialist's stage
    lives in the cache (``folder``) and is named for its risk, not the run (``patch_name``)."""

    def __init__(self, ctx: RunContext, index: int | None, name: str, folder: Path | None = None,
                 patch_name: str | None = None, what: str = "stage"):
        self.ctx, self.index, self.name, self.what = ctx, index, name, what
        self.dir = Path(folder) if folder is not None else ctx.out_dir / "stages" / f"{index:02d}-{name}"
        self.patch_name = patch_name or f"{ctx.run_name}-{name}"
        self.start = time.perf_counter()

    @property
    def done(self) -> bool:
        return (self.dir / "stage.json").is_file()

    def read(self) -> tuple[torch.Tensor, dict, dict] | None:
        """A finished stage's patch weights, evaluation and marker; None when it is not finished."""
        if not self.done:
            return None
        remedy = f"delete {self.dir} to redo the {self.what}"
        info = read_checked(self.dir / "stage.json", STAGE, f"{self.what} marker", remedy)
        evals = read_evals(self.dir / "eval.json", f"{self.what} evaluation", remedy)
        weights, _ = patch_matrix(self.dir / "patch")
        return weights, evals, info

    def restore(self, model, kind: str = "stage", trained: str | None = "") -> bool:
        """Load a finished stage's patch into ``model`` and its row into the matrix; False when not finished."""
        found = self.read()
        if found is None:
            # a stage killed half-way is redone from scratch: the main process removes what it left, the others wait
            distributed.on_main(shutil.rmtree, self.dir, ignore_errors=True)
            self.start = time.perf_counter()
            return False
        weights, evals, info = found
        set_prompt(model, weights)
        stale = self.ctx.stale(evals)
        if stale:  # evaluated before a risk's metric changed: its patch is kept, its evaluation redone
            evals.update(self.ctx.evaluate(model, risks=stale, desc=f"evaluating {self.name} again on "
                                                                    f"{', '.join(stale)} (its metric changed)"))
            atomic_write_json(self.dir / "eval.json", evals)
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
        self.ctx.save_patch(model, self.dir / "patch", segments, self.patch_name, training, evals)
        atomic_write_json(self.dir / "eval.json", evals)
        self.ctx.add_row(self.name, evals, kind, self._trained(trained), seconds)
        atomic_write_json(self.dir / "stage.json", {"index": self.index, "name": self.name, "seconds": seconds,
                                                    "training": training})


class RunContext:
    """The one base model in memory, the run's risks, their data, stages and the forgetting matrix.

    ``risks`` maps every risk of the run (canonical name) to its instance; ``constraints`` maps it to its
    ``after`` / ``requires`` / ``conflicts`` (written into every saved patch); ``on_row`` is called with the matrix
    after every row (e.g. to report to an Optuna pruner).
    """

    def __init__(self, cfg: RunConfig, out_dir: Path, loaded, order: list[str], risks: dict,
                 constraints: dict[str, dict] | None = None, on_row=None):
        self.cfg, self.out_dir, self.loaded, self.order = cfg, Path(out_dir), loaded, list(order)
        self.risks, self.constraints, self.on_row = risks, constraints or {}, on_row
        self.run_name = self.out_dir.name
        self.matrix = ForgettingMatrix(self.order)
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
        release_memory()
        self.memory[phase] = round(peak_rss_mb(), 1)
        log.debug(f"{phase}: {self.phases[phase]} s")

    # -- risks and data ----------------------------------------------------------------------------------
    def risk(self, name: str):
        return self.risks[name]

    def data(self, name: str) -> TrainingData:
        """The risk's training data, built once from the base model (cached across runs)."""
        if name in self._data:
            return self._data[name]
        local = self.out_dir / "data" / f"{name}.json"
        limits = self.cfg.limits_for(name)  # the risk's own data sizes, if its recipe sets them
        settings = ("model", "dtype", "train_limit", "retain_limit", "max_new_tokens", "samples", "seed", "margin",
                    "min_chosen_safety")
        key = self._cache_key(*settings, suffix="-" + self._data_key(name), **limits)
        cached = cache_dir() / "data" / f"{self.loaded.fingerprint.split(':')[-1]}-{name}-{key}.json"
        for path in (local, cached):
            if path.is_file():
                data = TrainingData.load(path)
                break
        else:
            start = time.perf_counter()
            torch.manual_seed(self.cfg.seed)
            data = build_training_data(self.risk(name), self.loaded.model, self.loaded.tokenizer, split="train",
                                       limit=limits["train_limit"], retain_limit=limits["retain_limit"],
                                       margin=self.cfg.margin, min_chosen_safety=self.cfg.min_chosen_safety,
                                       desc=f"building {name} data")
            self.timings[f"data/{name}"] = time.perf_counter() - start
            data.save(cached)
        if not local.is_file():
            data.save(local)
        self._data[name] = data
        log.info(f"{name} data: {len(data.sft)} SFT examples, {len(data.pairs)} pairs ({_stats(data.stats)})")
        return data

    def _cache_key(self, *settings: str, suffix: str = "", **values) -> str:
        """Key of a cached result: the cache version and a hash of the settings it depends on (``values`` in place
        of the run's, where the result is one risk's and its recipe sets its own)."""
        cfg = dataclasses.replace(self.cfg, **values) if values else self.cfg
        # the risks' own options change their data, metrics and teachers: a run that sets any keys every result by
        # them (a run that sets none keeps the keys it had before risk options existed)
        options = f"-o{cfg.digest('risk_options')[:8]}" if cfg.risk_options else ""
        return f"v{CACHE_VERSION}-{cfg.digest(*settings)}{options}{suffix}"

    def _data_key(self, name: str) -> str:
        src = {"data": self.cfg.data.get(name), "teacher": self.risk(name).teacher.describe()}
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
              frozen_rows: slice | None = None, desc: str = "training", risks: list[str] | None = None,
              subsets: list[Segment] | None = None) -> dict:
        """SFT then DPO on ``sft`` / ``pairs``, with the training settings of a stage that learns ``risks``;
        ``subsets``: the patch's blocks, SFT drawing a random subset of them for every example (``StagePlan``;
        DPO trains the whole patch)."""
        config = self.cfg.train_for(risks)
        # held back from training and watched: does the patch take the teacher's decision on risk prompts it
        # never saw, and keep the base model's answer on benign ones?
        held_out = {source: held_back(sft, config.probe_examples, source) for source in ("risk", "retain")}
        held = {e["prompt"] for examples in held_out.values() for e in examples}
        sft = [e for e in sft if e["prompt"] not in held]
        pairs = [p for p in pairs if p["prompt"] not in held]
        log.info(f"{desc}: {len(sft)} SFT examples, {len(pairs)} pairs, {len(held)} held back to watch the decision")
        torch.manual_seed(self.cfg.seed)
        watchers = [DecisionProbe(model, self.loaded.tokenizer, examples, name=source)
                    for source, examples in held_out.items() if examples]
        sft, groups = self.balanced(sft) if config.balance_weight > 0 else (sft, [])
        if config.lead_weight != 1.0 or (config.lead_tokens and config.lead_rest_weight != 1.0) \
                or config.echo_weight != 1.0:
            sft = self.led(sft, desc)
        if self.cfg.train.balance_weight > 0 and not groups \
                and not any(self.risk(r).balance_tokens(self.loaded.tokenizer) for r in self.order):
            # a weight for every risk that no risk can use (a risk's own recipe may name one for the replayed
            # examples of a risk that is not in this run: that is silent)
            log.warning(f"{desc}: balance_weight={self.cfg.train.balance_weight:g} has no effect: no risk of this "
                        f"run names token sets to balance (the bias risk does)")
        if config.block_gradients == "own" and not subsets:
            log.warning(f"{desc}: block_gradients=own has no effect: this stage does not train random subsets of "
                        f"blocks (strategy modular with activation subsets does)")
        blocks = [(b.start, b.start + b.tokens) for b in subsets] if subsets else None
        s = train_sft(model, self.loaded.tokenizer, sft, config, frozen_rows=frozen_rows, desc=desc,
                      probe=watchers, balance_groups=groups, blocks=blocks)
        own = []
        for k in range(config.balance_own_rounds if groups and s.steps else 0):
            # the balance where the patch's own answers go: GLD is measured along them, not the teacher's
            answers = self.own_answers(model, sft, f"{desc}: own answers, round {k + 1}")
            own.append(train_sft(model, self.loaded.tokenizer, sft + answers,
                                 dataclasses.replace(config, sft_epochs=1.0), frozen_rows=frozen_rows,
                                 desc=f"{desc} own answers {k + 1}", probe=watchers, balance_groups=groups,
                                 blocks=blocks))
        own_pairs = self.own_pairs(model, sft, f"{desc}: own answers for DPO") if config.own_pairs and s.steps else []
        if config.dpo_reference == "sft" and s.steps:
            # the patch as SFT left it (with any frozen blocks, in place): DPO refines the SFT policy. Against the
            # base model instead, the risk pairs are already won after SFT and only the retain pairs pull, which
            # undoes what SFT taught (measured: the refusal's first-token probability 0.77 -> 0.22).
            reference = Reference(prefix=get_prompt(model))
        d = train_dpo(model, self.loaded.tokenizer, pairs + own_pairs, config, reference=reference,
                      frozen_rows=frozen_rows, desc=desc)
        if d.steps:
            d.probes = [w.measure(s.steps + d.steps) for w in watchers]  # the decision after DPO too
        later, counts = [], []  # own_pairs_rounds: DPO again against what the patch still gets wrong
        for k in range(1, config.own_pairs_rounds if config.own_pairs and s.steps and d.steps else 1):
            more = self.own_pairs(model, sft, f"{desc}: own answers for DPO, round {k + 1}")
            counts.append(len(more))
            if not more:
                break
            if config.dpo_reference == "sft":
                reference = Reference(prefix=get_prompt(model))
            later.append(train_dpo(model, self.loaded.tokenizer, pairs + more, config,
                                   reference=reference, frozen_rows=frozen_rows, desc=f"{desc} own pairs {k + 1}"))
            later[-1].probes = [w.measure(s.steps + d.steps + sum(r.steps for r in later)) for w in watchers]
        for r in (s, *own, d, *later):
            log.info(f"  {r.summary()}")
        return {"sft": s.to_dict(), **({"sft_own": [r.to_dict() for r in own]} if own else {}), "dpo": d.to_dict(),
                **({"own_pairs": len(own_pairs)} if config.own_pairs else {}),
                **({"own_pairs_later": counts, "dpo_own": [r.to_dict() for r in later]} if counts else {}),
                "settings": config.to_dict()}

    def own_answers(self, model, sft: list[dict], desc: str) -> list[dict]:
        """``model``'s greedy answers (as its risk evaluates) to the prompts of the balanced risk examples of
        ``sft`` (``balanced``), as examples that carry their group's equalizing loss and no cross-entropy."""
        out = []
        for i, name in enumerate(self._balancing()):
            examples = [e for e in sft if e.get("source") == "risk" and e.get("balance", -1) == i]
            if not examples:
                continue
            answers = self.risk(name).respond(model, self.loaded.tokenizer, [e["prompt"] for e in examples], desc=desc)
            out += [{**{k: v for k, v in e.items() if k != "replay_of"}, "completion": a, "imitate": False}
                    for e, a in zip(examples, answers) if a.strip()]
        log.info(f"{desc}: {len(out)} of the patch's own answers carry the equalizing loss")
        return out

    def own_pairs(self, model, sft: list[dict], desc: str) -> list[dict]:
        """DPO pairs against ``model``'s own failures: its greedy answer (as its risk evaluates) to the prompt of
        every risk example of ``sft``, where the risk scores it below ``min_chosen_safety``, rejected for the
        teacher's answer there (the example's completion)."""
        out = []
        for name, data in self._data.items():
            prompts = {e["prompt"] for e in data.sft if e.get("source") == "risk"}
            examples = [e for e in sft if e.get("source") == "risk" and e["prompt"] in prompts]
            if not examples:
                continue
            risk = self.risk(name)
            answers = risk.respond(model, self.loaded.tokenizer, [e["prompt"] for e in examples], desc=desc)
            scores = risk.score([e["prompt"] for e in examples], answers)
            out += [{"prompt": e["prompt"], "chosen": e["completion"], "rejected": a, "source": "own"}
                    for e, a, score in zip(examples, answers, scores)
                    if score < self.cfg.min_chosen_safety and a.strip() and a.strip() != e["completion"].strip()]
            log.info(f"{desc}: {name}: {sum(1 for e in out if e['prompt'] in prompts)} of the patch's {len(examples)} "
                     f"answers scored unsafe become rejected answers")
        return out

    def fresh_replay(self, model, earlier: list[str], index: int, name: str, risks: list[str],
                     learned: dict[str, torch.Tensor] | None = None) -> list[dict]:
        """Stage ``index``'s (0-based) examples of ``TrainConfig.replay_fresh``: per risk of ``earlier``, that many
        prompts of its training split that its data does not hold (a seeded sample), with greedy answers, tagged
        ``replay_of`` and ``fresh``. The answers are ``model``'s with the patch its own stage left (``learned``:
        risk -> patch weights), where that patch fits ``model``'s, else with the patch as this stage begins (a
        stacked patch grows a block per stage). Written into the run folder's data, so a resumed stage replays the
        same answers."""
        n = self.cfg.train_for(risks).replay_fresh
        if n > 0 and index > 0 and not earlier:
            log.warning(f"stage {index + 1} {name}: replay_fresh={n} has no effect: this strategy replays nothing "
                        f"(sequential-replay and stacked do)")
        if n <= 0 or not earlier:
            return []
        path = self.out_dir / "data" / f"fresh-{index + 1:02d}-{name}.json"
        if path.is_file():
            d = read_checked(path, {"examples": Field("list")}, "fresh replay", "delete it to answer them again")
            return d["examples"]
        out = []
        for risk in earlier:
            trained = {e["prompt"] for e in self.data(risk).sft} | {p["prompt"] for p in self.data(risk).pairs}
            unused = [p for p in self.risk(risk).prompts("train") if p not in trained]
            prompts = random.Random(f"{self.cfg.seed}:{index}:{risk}").sample(unused, min(n, len(unused)))
            if len(prompts) < n:
                log.warning(f"stage {index + 1} {name}: replay_fresh={n} but {risk} has only {len(unused)} training "
                            f"prompts that no stage trained on")
            if not prompts:
                continue
            current, own = get_prompt(model), (learned or {}).get(risk)
            own = own if own is not None and own.shape == current.shape else None
            if own is not None:
                set_prompt(model, own)
            try:
                answers = self.risk(risk).respond(model, self.loaded.tokenizer, prompts,
                                                  desc=f"stage {index + 1} {name}: fresh {risk} prompts")
            finally:
                if own is not None:
                    set_prompt(model, current)
            out += [{"prompt": p, "completion": a, "source": "risk", "replay_of": risk, "fresh": True}
                    for p, a in zip(prompts, answers) if a.strip()]
        distributed.on_main(atomic_write_json, path, {"examples": out})
        log.info(f"stage {index + 1} {name}: {len(out)} fresh prompts of {', '.join(earlier)}, answered by the patch "
                 f"each one's own stage left, replayed")
        return out

    def led(self, sft: list[dict], desc: str = "") -> list[dict]:
        """``sft`` with every risk example whose answer opens with its teacher's own opening (``Teacher.lead``, e.g.
        a prefilled teacher's) tagged with that opening's length in tokens (``lead``): what
        ``TrainConfig.lead_weight`` weighs; where the opening begins by repeating the prompt ("{prompt} they"), that
        part's length too (``echo``): what ``TrainConfig.echo_weight`` weighs."""
        owner = {e["prompt"]: name for name, data in self._data.items() for e in data.sft if e.get("source") == "risk"}
        out, tagged = [], 0
        for e in sft:
            name = (owner.get(e["prompt"]) or (e["replay_of"] if e.get("fresh") else None)) \
                if e.get("source") == "risk" else None
            opening = self.risk(name).teacher.lead(self.risk(name), e["prompt"]) if name else None
            if opening and e["completion"].startswith(opening):
                e = {**e, "lead": self._tokens(opening)}
                echo = self.risk(name).untemplated(e["prompt"]).strip()
                if echo and opening.startswith(echo):  # the lead repeats the prompt first: echo_weight weighs that
                    e["echo"] = self._tokens(echo)
                tagged += 1
            out.append(e)
        if not tagged:
            log.warning(f"{desc}: lead_weight has no effect: no risk example's answer opens with its teacher's own "
                        f"opening (a prefilled teacher's, e.g. the bias risk's teacher_prefill)")
        return out

    def _tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _balancing(self) -> list[str]:
        """The risks of this run's data that name token sets to balance, in the order of their groups."""
        return [name for name in self._data if self.risk(name).balance_tokens(self.loaded.tokenizer)]

    def balanced(self, sft: list[dict]) -> tuple[list[dict], list[tuple[list[int], list[int]]]]:
        """``sft`` with every risk example of a risk that names token sets to balance (``Risk.balance_tokens``)
        flagged with its group's index, and those groups: what the equalizing loss needs."""
        groups, owner, fresh = [], {}, {}
        for name in self._balancing():
            owner.update({e["prompt"]: len(groups) for e in self._data[name].sft if e.get("source") == "risk"})
            fresh[name] = len(groups)
            groups.append(self.risk(name).balance_tokens(self.loaded.tokenizer))

        def group(e):  # a risk example of a balancing risk, or a fresh replayed one of such a risk (fresh_replay)
            if e.get("source") != "risk":
                return None
            return fresh.get(e.get("replay_of")) if e.get("fresh") else owner.get(e["prompt"])

        tagged = [{**e, "balance": group(e)} if group(e) is not None else e for e in sft]
        if not any("balance" in e for e in tagged):  # no such risk's example in this stage: plain SFT
            return sft, []
        return tagged, groups

    def save_patch(self, model, path: Path, segments, name: str, training: dict | None, evals: dict | None):
        metrics = {r: {"safety": m["safety"], "raw": m["raw"]} for r, m in (evals or {}).items()}
        risks = {s.risk for s in segments}
        cons = {k: sorted({x for r in risks for x in self.constraints.get(r, {}).get(k, [])})
                for k in CONSTRAINT_KINDS}
        save_patch(model, path, name=name, segments=segments, base_model=self.cfg.model,
                   fingerprint=self.loaded.fingerprint, training={"strategy": self.cfg.strategy,
                                                                  "preset": self.cfg.preset, **self.cfg.train.to_dict(),
                                                                  "stages": training or {}},
                   metrics=metrics, **cons)

    # -- evaluation and the matrix -----------------------------------------------------------------------
    def evaluate(self, model, desc: str = "evaluating", risks: list[str] | None = None) -> dict:
        """Evaluate ``model`` on ``risks`` (default: every risk of the run)."""
        log.info(desc)
        results = evaluate_risks(model, self.loaded.tokenizer, [self.risk(r) for r in risks or self.order],
                                 limit=self.cfg.eval_limit)
        return {r: m.to_dict() for r, m in results.items()}

    def stale(self, evals: dict) -> list[str]:
        """The run's risks that ``evals`` (a stored evaluation) lacks, or holds from an earlier revision of the
        risk's metric (``Risk.metric_revision``): what must be evaluated again."""
        return [r for r in self.order
                if r not in evals or evals[r].get("revision", 1) != getattr(self.risk(r), "metric_revision", 1)]

    def base_row(self) -> None:
        """Row 0: the unpatched model (cached across runs with the same evaluation settings)."""
        key = self._cache_key("model", "dtype", "eval_limit", "max_new_tokens", "samples", "seed", "data")
        path = cache_dir() / "evals" / f"{self.loaded.fingerprint.split(':')[-1]}-{key}.json"
        cached = read_evals(path, "cached evaluation", "delete it to rebuild the cache") if path.is_file() else {}
        missing = self.stale(cached)
        start = time.perf_counter()
        if missing:
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
        """A single-risk patch trained from the base model (reused from the run folder or the cache): a stage
        kept in the cache, so that runs of every strategy on the same settings share it."""
        name = f"{risk} specialist"
        local = self.out_dir / "specialists" / risk
        key = self._cache_key("model", "dtype", "train_limit", "retain_limit", "max_new_tokens", "samples", "seed",
                              "margin", "min_chosen_safety", "train", "risk_train", "eval_limit", "data",
                              suffix=self._data_key(risk))
        cached = cache_dir() / "specialists" / f"{self.loaded.fingerprint.split(':')[-1]}-{risk}-" \
                                               f"{self.cfg.tokens[risk]}-{key}"
        for path in (local, cached):
            found = Stage(self, None, name, folder=path, what="specialist").read()
            if found is not None:
                weights, evals, info = found
                missing = self.stale(evals)
                if missing:  # trained by a run of fewer risks, or evaluated before a risk's metric changed
                    evals.update(self.evaluate(self.new_patch(weights.shape[0], init=weights), risks=missing,
                                               desc=f"evaluating the {risk} specialist on {', '.join(missing)}"))
                    atomic_write_json(path / "eval.json", evals)
                self.add_row(name, evals, "specialist", risk, info.get("seconds"))
                if path != local:
                    distributed.on_main(shutil.copytree, path, local, dirs_exist_ok=True)  # others wait for it
                log.info(f"{risk} specialist: reused from {path}")
                return weights
        stage = Stage(self, None, name, folder=cached, patch_name=f"{risk}-specialist", what="specialist")
        model = self.new_patch(self.cfg.tokens[risk], init_text=self.risk(risk).init_text)
        data = self.data(risk)
        training = self.train(model, data.sft, data.pairs, desc=name, risks=[risk])
        stage.finish(model, [Segment(risk, 0, self.cfg.tokens[risk])], training, kind="specialist", trained=risk)
        distributed.on_main(shutil.copytree, cached, local, dirs_exist_ok=True)
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
    examples = [e for e in sft if e.get("source") == source and not e.get("fresh")]
    return examples[len(examples) - min(n, len(examples) // 5):] if n > 0 else []


def _stats(stats: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's ``malloc_trim``)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): the allocator keeps its pages, only the peak figure is recorded
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
