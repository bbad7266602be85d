"""``compose run``: train and compose patches for several risks with a strategy, measuring forgetting.

A run folder holds everything needed to reproduce and read the run::

    runs/NAME/
      config.yaml            the resolved settings (preset < config file < flags)
      data/RISK.json         the training examples and preference pairs built for each risk
      data/fresh-NN-NAME.json  stage NN's fresh replayed prompts and the patch's answers (train.replay_fresh)
      stages/NN-NAME/        one finished stage: patch/ (a patch directory), eval.json, stage.json (written last)
      specialists/RISK/      single-risk patches (concatenated, merged), reused when already built
      replay.json            the replay buffer (replay strategies)
      patch/                 the final composed patch
      forgetting.json        the forgetting matrix with its summary figures
      report.md, forgetting.png, results.json (written last: the run is finished)

Resuming: a stage whose ``stage.json`` exists is loaded, not redone; anything else is redone from scratch. A
finished run whose report files are missing gets them rebuilt. One process at a time works in a run folder
(``.lock`` names it; a lock whose process is gone is taken over), and ``--out`` must be new, empty or a
run folder (``--force`` otherwise).
Training data, specialists and base-model evaluations are also cached under ``$COMPOSE_CACHE`` (keyed by
every setting they depend on), so runs of several strategies on the same risks share them.

Several processes: ``torchrun --nproc_per_node N -m compose run ...`` (or ``accelerate launch -m compose run``)
runs the same job data-parallel (``compose.distributed``): training through DDP with the global batch
(``train.batch_size``) split across the processes, generation and evaluation batches shared out and gathered,
and only the main process writing files (it claims and locks the run folder for all of them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import textwrap
import time
from pathlib import Path

import torch

from compose import config as config_mod
from compose import distributed
from compose.cli.arguments import add_model_arguments, add_out_argument
from compose.cli.config import (DATA_HELP, parse_assignments, parse_data_args, parse_option_args, parse_train_args,
                                resolve, resolve_order, risk_constraints, run_risks)
from compose.context import RunContext, peak_rss_mb
from compose.errors import ComposeError
from compose.forgetting import ForgettingMatrix
from compose.generation import context_length
from compose.graph import draw_graph, interference_graph, interference_order
from compose.hardware import matmul_tflops
from compose.io import FolderLock, atomic_write_json, claim_output_dir
from compose.models import load_model
from compose.patch import count_parameters
from compose.report import write_report, write_seed_summary
from compose.schema import RESULTS, read_checked, read_evals
from compose.strategy import describe_options
from compose.train import TrainConfig
from strategies import STRATEGIES, get_strategy


log = logging.getLogger("compose.run")

REPORT_FILES = ("report.md", "forgetting.png")


def make_context(cfg: config_mod.RunConfig, out_dir: Path, loaded, order: list[str], on_row=None) -> RunContext:
    """The context a strategy works in, for run ``cfg`` in ``out_dir``: its risks looked up in the registry."""
    kind = ParallelRunContext if distributed.active() else RunContext
    return kind(cfg, out_dir, loaded, order, run_risks(cfg), risk_constraints(cfg), on_row)


class ParallelRunContext(RunContext):
    """The context of one process of several: the main one saves (each trains on its share of every batch:
    ``compose.train``)."""

    def save_patch(self, *args, **kwargs):
        return distributed.on_main(super().save_patch, *args, **kwargs)


def auto_order(cfg: config_mod.RunConfig, out_dir: Path, loaded, given: list[str]) -> list[str]:
    """Choose the order from measured interference: train (or reuse) every single-risk specialist, evaluate
    it on every risk, and pick the allowed order with the least predicted forgetting (``compose.graph``).
    Writes ``order.json`` (transfer matrix, orders considered, reasons) and ``order.png`` into the run folder.
    """
    probe = make_context(cfg, out_dir, loaded, given)
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
    check_batches(cfg)
    with contextlib.ExitStack() as lock:
        out_dir, created = distributed.first(_claim_run_folder, out_dir, force, lock)
        try:
            _check_resume(cfg, out_dir)
            finished = _finished_results(out_dir)
            if finished is not None:
                return finished
            return _run(cfg, out_dir, loaded, on_row)
        except BaseException:
            if created and distributed.is_main() and not _started(out_dir):  # refused before it began
                shutil.rmtree(out_dir, ignore_errors=True)  # leave nothing behind
            raise


def check_batches(cfg: config_mod.RunConfig) -> None:
    """Refuse, before anything starts, a global batch (``train`` or a risk's ``risk_train``) that does not split
    evenly across the processes."""
    distributed.per_process_batch(cfg.train.batch_size, "train.batch_size")
    for risk, train in cfg.risk_train.items():
        if "batch_size" in train:
            distributed.per_process_batch(train["batch_size"], f"risk_train.{risk}.batch_size")


def _claim_run_folder(out_dir, force: bool, lock: contextlib.ExitStack) -> tuple[Path, bool]:
    """Claim ``out_dir`` as a run folder and take its lock (held until ``lock`` closes); returns the folder and
    whether it was created here. Several processes: the main one does this for all of them."""
    created = not Path(out_dir).exists()
    out_dir = claim_output_dir(out_dir, "run", "--out", force=force,
                               owned=lambda p: (p / "config.yaml").is_file())  # run folders from before markers
    lock.enter_context(FolderLock(out_dir, "run folder"))
    return out_dir, created


def _run(cfg: config_mod.RunConfig, out_dir: Path, loaded, on_row) -> dict:
    """The run itself; outputs are written patch first and results.json last, so a killed run is resumed."""
    start = time.perf_counter()
    loaded = loaded or load_model(cfg.model, cfg.dtype)
    weight = next(loaded.model.parameters())
    probe = matmul_tflops(str(weight.device), weight.dtype)  # wall time is read against it (it drifts between sessions)
    speed = {"dtype": probe["dtype"], "n": probe["n"], "start": probe["tflops"]}
    check_context(cfg, loaded)
    _check_data_files(cfg)
    order = resolve_order(cfg)
    strategy = get_strategy(cfg.strategy, cfg.to_dict())
    cfg.save(out_dir / "config.yaml")  # only once the settings are known to work with this model
    if cfg.order == "auto":
        order = auto_order(cfg, out_dir, loaded, order)
    ctx = make_context(cfg, out_dir, loaded, order, on_row)
    log.info(f"run {out_dir}: strategy {cfg.strategy}, order {' -> '.join(order)}, tokens "
             f"{', '.join(f'{r}={cfg.tokens[r]}' for r in order)}, preset {cfg.preset}, {_compute(weight, cfg)}")
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
               "data_seconds": ctx.timings, "peak_rss_mb": peak_rss_mb(),
               "peak_rss_mb_after": ctx.memory, "threads": torch.get_num_threads(),
               "compute_dtype": str(weight.dtype).removeprefix("torch."), "config": cfg.to_dict()}
    probe = matmul_tflops(str(weight.device), weight.dtype, n=speed["n"])
    speed["end"] = probe["tflops"]
    if probe["n"] != speed["n"]:  # the machine slowed so far that the same cube no longer fit the probe's budget
        speed["n_end"] = probe["n"]
    results["matmul_tflops"] = speed  # this machine's speed in the run's compute dtype at its start and its end
    _write_run_report(ctx.matrix, out_dir, results)
    ctx.mark("report")
    results["wall_seconds"] = time.perf_counter() - start  # the report's phase included (report.md: up to it)
    ctx.phases["model loaded"] = round(loaded.load_seconds, 2)  # before the context existed: the load itself
    results["phases"] = ctx.phases
    atomic_write_json(out_dir / "results.json", results)
    return results


def _compute(weight, cfg: config_mod.RunConfig) -> str:
    """The compute dtype and device for the run's first log line; says why a CPU computes in float32 under
    ``--dtype auto`` (no native bf16: several times slower than a CPU with AMX, the machine the presets' times are
    given for)."""
    dtype = str(weight.dtype).removeprefix("torch.")
    why = ""
    if cfg.dtype == "auto" and weight.device.type == "cpu" and weight.dtype == torch.float32:
        why = " (this CPU has no native bf16: AVX512-BF16 or AMX)"
    return f"{dtype} on {weight.device}{why}"


def _speed(results: dict) -> str:
    """The machine's speed during the run for the last line, e.g. " (this machine's bfloat16 matmul 2.30 -> 2.28
    TFLOP/s)"; empty for a run from before it was measured."""
    speed = _matmul_speed(results)
    if speed.get("start") is None or speed.get("end") is None:
        return ""
    return f" (this machine's {speed['dtype']} matmul {speed['start']:.3g} -> {speed['end']:.3g} TFLOP/s)"


def _matmul_speed(results: dict) -> dict:
    """``results.json -> matmul_tflops``; a run from before it named its dtype recorded ``bf16_matmul_tflops``."""
    if "matmul_tflops" in results:
        return results["matmul_tflops"] or {}
    old = results.get("bf16_matmul_tflops") or {}
    return {"dtype": "bfloat16", "n": 2048, **old} if old else {}


def _write_run_report(matrix: ForgettingMatrix, out_dir: Path, results: dict) -> None:
    """report.md and forgetting.png of a run, from its matrix and results (also for a run finished earlier)."""
    peak = results.get("peak_rss_mb")
    write_report(matrix, out_dir, title=f"{results['strategy']}: {', '.join(results['order'])} on {results['model']}",
                 extra={"parameters": results["parameters"], "tokens": results["tokens"],
                        "wall_seconds": results["wall_seconds"], "peak_memory_mb": None if peak is None else round(peak),
                        "compute_dtype": results.get("compute_dtype"), "matmul_tflops": _matmul_speed(results) or None,
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
    for risk in run_risks(cfg).values():
        if risk.data_sources:
            risk.prompts("train", 1)


def check_context(cfg: config_mod.RunConfig, loaded) -> None:
    """Refuse a patch that leaves no room for the training examples in the model's context."""
    context = context_length(loaded.model)
    if context is not None and cfg.total_tokens + cfg.train.max_length > context:
        raise ComposeError(f"the patch's {cfg.total_tokens} virtual tokens plus train.max_length "
                           f"{cfg.train.max_length} exceed the {context}-token context of model {cfg.model}; "
                           f"lower --tokens (at most {context - cfg.train.max_length} in all) or train.max_length")


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
                           f"differ); resume it with the same settings or choose another --out")


# --- CLI -----------------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = strategies_help() + "\n\n" + train_help()
    p.add_argument("--risks", help="comma-separated risks in the order to train them, e.g. tox,bias,harm")
    p.add_argument("--strategy", help=f"{', '.join(STRATEGIES)} (default {config_mod.DEFAULT_STRATEGY}); "
                                      f"their options are listed below")
    add_model_arguments(p)
    p.set_defaults(model=None, dtype=None)
    p.add_argument("--preset", help="smoke (seconds), quick (default, 200 eval prompts per risk: ~22 min on 2 CPU cores "
                   "with AMX, about an hour on 2 AVX2-only cores), paper (the published settings, for a GPU)")
    p.add_argument("--tokens", help="virtual tokens per risk, e.g. tox=20,bias=20,harm=10, or one number for all")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the strategy, e.g. replay=0.5 or method=ties (repeatable; listed below)")
    p.add_argument("--replay", type=float, help="the replay option: share of each later stage's data replayed "
                                                "from earlier risks (sequential-replay, stacked)")
    p.add_argument("--merge", choices=["average", "task-arithmetic", "ties", "dare-ties"],
                   help="the method option of the merged strategy")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting, e.g. sft_lr=0.01 or retain_objective=kl (repeatable; listed below)")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="one run per seed into OUT/seedS, then seeds.md / seeds.json / seeds.png: mean and "
                        "spread over seeds and paired tests pooled over seeds (replaces --seed)")
    p.add_argument("--order", choices=["given", "auto"], help="given: dependency graph, ties in --risks order")
    p.add_argument("--train-limit", type=int, help="training prompts per risk")
    p.add_argument("--eval-limit", type=int, help="evaluation prompts per risk")
    p.add_argument("--data", action="append", default=[], metavar="RISK[:SPLIT]=PATH", help=DATA_HELP)
    p.add_argument("--opt", action="append", default=[], metavar="RISK:KEY=VALUE",
                   help="an option of a risk, e.g. bias:teacher_score=story (repeatable; `compose risks` lists them)")
    p.add_argument("--config", help="YAML file with the same settings (flags override it)")
    add_out_argument(p, "run folder (default runs/STRATEGY-RISKS-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its saved config")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that is not empty and is not a run folder")


def strategies_help() -> str:
    """The strategies and their options, for ``compose run --help``."""
    lines = ["strategies (options with --option KEY=VALUE, or in the config file):"]
    for name, cls in STRATEGIES.items():
        lines.append(f"  {name}: {cls.description}")
        lines += [f"      {line}" for line in describe_options(cls)]
    return "\n".join(lines)


def train_help() -> str:
    """The training settings (``--train KEY=VALUE``) with their defaults."""
    fields = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(TrainConfig))
    return "training settings (--train KEY=VALUE; defaults before the preset's):\n" + textwrap.fill(
        fields, width=110, initial_indent="  ", subsequent_indent="  ")


def main(args) -> int:
    distributed.start()
    if not distributed.is_main():  # the main process reports for all of them
        logging.getLogger().setLevel(logging.WARNING)
        os.environ["TQDM_DISABLE"] = "1"
    file = {}
    if args.resume:
        if not args.out or not (Path(args.out) / "config.yaml").is_file():
            raise ComposeError("--resume needs --out pointing at an earlier run folder (with config.yaml)")
        file = config_mod.load_config_file(Path(args.out) / "config.yaml")
    if args.config:
        given = config_mod.load_config_file(args.config)
        if args.resume and isinstance(given.get("risk_train"), dict):
            # per risk over the saved run's: the saved train settings are complete, so a preset's recipe for a risk
            # the file does not name survives only through the saved risk_train (see resolve_risk_train)
            given["risk_train"] = {**(file.get("risk_train") or {}), **given["risk_train"]}
        file = {**file, **given}
    flags = {"risks": args.risks, "strategy": args.strategy, "model": args.model, "dtype": args.dtype,
             "preset": args.preset, "tokens": args.tokens, "seed": args.seed,
             "order": args.order, "train_limit": args.train_limit, "eval_limit": args.eval_limit}
    if args.train:
        flags["train"] = parse_train_args(args.train)
    if args.data:
        flags["data"] = parse_data_args(args.data)
    if args.opt:
        flags["risk_options"] = parse_option_args(args.opt)
    options = {"--option": parse_assignments(args.option, "--option")}
    if args.replay is not None:
        options["--replay"] = {"replay": args.replay}
    if args.merge:
        options["--merge"] = {"method": args.merge}
    seeds = parse_seeds(args.seeds) if args.seeds else None
    if seeds and args.seed is not None:
        raise ComposeError("give either --seed or --seeds, not both")
    cfg = resolve(file, options=options, **flags)
    out = Path(args.out or f"runs/{cfg.strategy}-{'-'.join(cfg.risks)}-{cfg.preset}")
    show = print if distributed.is_main() else (lambda text: None)
    if not seeds:
        results = execute(cfg, out, force=args.force)
        show(summary_table(results, out))
        return 0
    distributed.first(claim_output_dir, out, "run", "--out", force=args.force)
    for seed in seeds:
        log.info(f"seed {seed} of {', '.join(map(str, seeds))}")
        results = execute(resolve(file, options=options, **{**flags, "seed": seed}), out / f"seed{seed}",
                          force=args.force)
        show(summary_table(results, out / f"seed{seed}"))
    matrices = {seed: ForgettingMatrix.load(out / f"seed{seed}" / "forgetting.json") for seed in seeds}
    written, table = write_seed_summary(matrices, out, title=f"{cfg.strategy}: {', '.join(cfg.risks)}")
    show("\n" + table)
    show("wrote " + ", ".join(str(p) for p in written))
    return 0


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
              f"of the model); wall time {results['wall_seconds']:.0f}s{_speed(results)}",
              f"run folder: {out} (report.md, forgetting.png, patch/)"]
    return "\n".join(lines)
