"""A patch vs LoRA adapters trained with the same two-stage recipe (SFT then DPO) on the same data of one risk.

    .venv/bin/python experiments/patch_vs_lora.py --risk toxicity --ranks 1,16 --seeds 0

For each seed: the patch (prompt tuning, the run's token count; the same single-risk specialist the
concatenated / merged strategies use, reused from the cache when it exists) and a LoRA adapter of each rank
(PEFT, on the attention query and value projections) are trained on the risk's teacher data with the preset's
settings, then evaluated on the risk's eval split. Reported per variant: trainable parameters, training time,
safety and the raw metric, fluency, and the inference overhead of generation (batch 32, 64 new tokens, greedy)
against the unpatched model, measured side by side in this process. Writes
experiments/results/patch_vs_lora/{results.json,report.md}.

Timings are only meaningful on an otherwise idle machine. When the training ran beside other work, time the
variants again afterwards (untrained adapters of the same architecture: the computation does not depend on the
weights' values) and update the results in place:

    .venv/bin/python experiments/patch_vs_lora.py --risk toxicity --ranks 1,16 --overhead-only
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments" / "bench"))

from compose.cli.config import resolve  # noqa: E402
from compose.cli.run import make_context  # noqa: E402
from compose.context import RunContext  # noqa: E402
from compose.generation import GenerationConfig, generate  # noqa: E402
from compose.io import atomic_write_json, atomic_write_text  # noqa: E402
from compose.models import load_model  # noqa: E402
from perf import PROMPTS, timed  # noqa: E402


def lora_model(base, rank: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def overhead(model, tokenizer, repeat: int) -> dict:
    """Generation time of ``model`` vs the same model with its adapter switched off, batch 32 x 64 tokens.

    Both are warmed up at full size, then timed in alternation ``repeat`` times (best of each): timing one
    after the other favours whichever runs second (allocator and caches warm), by several percent on a CPU.
    """
    cfg = GenerationConfig(max_new_tokens=64, min_new_tokens=64, batch_size=32)

    def unpatched():
        with model.disable_adapter():
            generate(model, tokenizer, PROMPTS, cfg)

    def adapted():
        generate(model, tokenizer, PROMPTS, cfg)

    unpatched(), adapted()  # warm-up
    base = patched = float("inf")
    for _ in range(repeat):
        base, patched = min(base, timed(unpatched)), min(patched, timed(adapted))
    return {"unpatched_s": base, "adapted_s": patched, "overhead": patched / base - 1, "overhead_repeats": repeat}


def overhead_only(loaded, tokens: int, ranks: list[int], repeat: int) -> dict[str, dict]:
    """The inference overhead of each variant's architecture, untrained: the values of the weights do not change
    the computation (an unmerged LoRA runs its two matmuls whatever they hold; a patch adds its tokens)."""
    from compose.patch import attach_patch

    rows = {}
    patch = attach_patch(loaded.model, loaded.tokenizer, num_tokens=tokens)
    rows[f"patch ({tokens} tokens)"] = overhead(patch, loaded.tokenizer, repeat)
    base = patch.get_base_model()
    for rank in ranks:
        model = lora_model(base, rank)
        rows[f"LoRA r={rank}"] = overhead(model, loaded.tokenizer, repeat)
        base = model.unload()
    return rows


def seconds(training: dict) -> float:
    return sum(training[s]["seconds"] for s in ("sft", "dpo"))


def run_seed(ctx: RunContext, risk: str, ranks: list[int], repeat: int) -> list[dict]:
    loaded, rows = ctx.loaded, []
    n = ctx.cfg.tokens[risk]
    data = ctx.data(risk)

    start = time.perf_counter()
    weights = ctx.specialist(risk)  # trained with the run's recipe, or reused from the cache
    patch = ctx.new_patch(n, init=weights)
    row = ctx.matrix.rows[-1]
    info = _specialist_info(ctx, risk)
    rows.append({"variant": f"patch ({n} tokens)", "trainable": trainable(patch),
                 "train_seconds": info.get("seconds", time.perf_counter() - start),
                 "safety": row.scores[risk], "raw": row.raw[risk], "fluency": row.fluency,
                 **overhead(patch, loaded.tokenizer, repeat)})

    for rank in ranks:
        model = lora_model(loaded.model, rank)
        training = ctx.train(model, data.sft, data.pairs, desc=f"{risk} LoRA r={rank}")
        evals = ctx.evaluate(model, desc=f"evaluating LoRA r={rank}")
        ctx.add_row(f"LoRA r={rank}", evals, "specialist", risk, seconds(training))
        row = ctx.matrix.rows[-1]
        rows.append({"variant": f"LoRA r={rank}", "trainable": trainable(model), "train_seconds": seconds(training),
                     "safety": row.scores[risk], "raw": row.raw[risk], "fluency": row.fluency,
                     **overhead(model, loaded.tokenizer, repeat)})
        loaded.model = model.unload()  # the base model without the LoRA layers, for the next variant
    return rows


def _specialist_info(ctx: RunContext, risk: str) -> dict:
    from compose.io import read_json

    path = ctx.out_dir / "specialists" / risk / "stage.json"
    info = read_json(path) if path.is_file() else {}
    training = info.get("training")
    return {"seconds": seconds(training)} if training else {}


def _mean_sd(values: list[float], fmt: str = ".3f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(set(values)) == 1:  # one seed, or one measurement shared by the seeds (--overhead-only)
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):.{fmt.lstrip('+')[1:]}}"


def report(results: dict, risk: str) -> str:
    variants = list(dict.fromkeys(r["variant"] for rows in results["seeds"].values() for r in rows))
    base = results["base"]
    lines = [f"# Patch vs LoRA on {risk} ({results['model']}, preset {results['preset']}, "
             f"seeds {', '.join(results['seeds'])})", "",
             f"Base model: safety {base['safety']:.3f}, raw {_raw(base['raw'])}.", "",
             "| variant | trainable parameters | training s | safety | raw metric | perplexity | "
             "inference overhead |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        rows = [r for rows in results["seeds"].values() for r in rows if r["variant"] == v]
        raw_keys = list(rows[0]["raw"])
        raw = ", ".join(f"{k} {_mean_sd([r['raw'][k] for r in rows])}" for k in raw_keys)
        lines.append(f"| {v} | {rows[0]['trainable']:,} | {_mean_sd([r['train_seconds'] for r in rows], '.0f')} | "
                     f"{_mean_sd([r['safety'] for r in rows])} | {raw} | "
                     f"{_mean_sd([r['fluency'].get('perplexity') for r in rows])} | "
                     f"{_mean_sd([100 * r['overhead'] for r in rows], '+.1f')}% |")
    how = results.get("overhead_remeasured", {}).get("how", f"in the training process, best of "
                                                              f"{rows[0].get('overhead_repeats', 1)}")
    lines += ["", "Mean ± standard deviation over the seeds (one value: one seed). Inference overhead: generation "
              "time of 32 prompts x 64 new tokens against the same model with the adapter off, measured side by "
              f"side ({how}). Published (7B-9B models on a GPU): LoRA reaches slightly lower toxicity with 12-200x the "
              "parameters and about 10x the inference overhead of a 50-token patch (+2.5% vs +24%).", ""]
    return "\n".join(lines)


def _raw(raw: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in raw.items() if isinstance(v, (int, float)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--risk", default="toxicity")
    p.add_argument("--ranks", default="1,16")
    p.add_argument("--seeds", default="0", help="training seeds (the data and evaluation stay fixed)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats of the overhead measurement")
    p.add_argument("--overhead-only", action="store_true",
                   help="no training: time the variants' architectures again (on an idle CPU) into --out")
    p.add_argument("--work-dir", default="runs/patch-vs-lora")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "patch_vs_lora"))
    args = p.parse_args()

    base_cfg = resolve({}, risks=args.risk, preset=args.preset, model=args.model, strategy="concatenated")
    risk = base_cfg.risks[0]
    ranks = [int(r) for r in args.ranks.split(",") if r]
    loaded = load_model(base_cfg.model, base_cfg.dtype)
    out = Path(args.out)
    if args.overhead_only:
        return remeasure_overhead(out, loaded, base_cfg.tokens[risk], ranks, args.repeat, risk)
    results = {"model": base_cfg.model, "preset": args.preset, "risk": risk, "config": base_cfg.to_dict(),
               "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__}, "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        cfg = dataclasses.replace(base_cfg, train=dataclasses.replace(base_cfg.train, seed=seed))
        ctx = make_context(cfg, Path(args.work_dir) / f"seed{seed}", loaded, [risk])
        ctx.base_row()
        base = ctx.matrix.rows[0]
        results["base"] = {"safety": base.scores[risk], "raw": base.raw[risk], "fluency": base.fluency}
        results["seeds"][str(seed)] = rows = run_seed(ctx, risk, ranks, args.repeat)
        for r in rows:
            print(f"seed {seed} {r['variant']}: {r['trainable']:,} trainable, train {r['train_seconds']:.0f}s, "
                  f"safety {r['safety']:.3f} ({_raw(r['raw'])}), overhead {r['overhead']:+.1%}")
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", report(results, risk))
    print((out / "report.md").read_text())
    return 0


def remeasure_overhead(out: Path, loaded, tokens: int, ranks: list[int], repeat: int, risk: str) -> int:
    """Measure the variants' overhead again (untrained, CPU otherwise idle) into OUT/results.json and report."""
    from compose.io import read_json

    measured = overhead_only(loaded, tokens, ranks, repeat)
    for variant, m in measured.items():
        print(f"{variant}: unpatched {m['unpatched_s']:.2f}s, adapted {m['adapted_s']:.2f}s, overhead {m['overhead']:+.1%}")
    if not (out / "results.json").is_file():
        print(f"no {out / 'results.json'} to update; nothing written")
        return 0
    results = read_json(out / "results.json")
    for rows in results["seeds"].values():
        for row in rows:
            if row["variant"] in measured:
                row.update(measured[row["variant"]])
    results["overhead_remeasured"] = {"variants": measured, "how": "--overhead-only: untrained adapters of the "
                                      "same architecture, timed in alternation with the adapter off, best of "
                                      f"{repeat}, nothing else running"}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", report(results, risk))
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
