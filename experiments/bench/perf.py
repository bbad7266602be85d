"""Performance figures of compose on this machine, each measured side by side in one process.

    python experiments/bench/perf.py [--model smollm2-135m] [--quick]

Prints one line per figure and writes experiments/results/perf.json and perf.md:
  1. generation: unpatched vs patched (cached prefix, the only patched path); batch 32, 50-token patch,
     64 new tokens, greedy;
  2. training step: bf16 vs fp32 (SFT), and tokens/s against the model-FLOP bound implied by a bf16 matmul
     throughput measured in the same process;
  3. DPO: precomputed reference (once per dataset) vs reference computed at every step;
  4. evaluation: batched generation vs one prompt at a time on the same prompts;
  5. (optional, --run-json) wall time and peak memory of a finished `compose run`, read from its results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compose.generation import GenerationConfig, generate  # noqa: E402
from compose.models import cpu_has_fast_bf16, load_model  # noqa: E402
from compose.patch import attach_patch  # noqa: E402
from compose.train import TrainConfig, make_dpo_trainer, make_sft_trainer  # noqa: E402

PROMPTS = [f"{q} {t}" for t in ("bread", "rivers", "the moon", "chess", "tea", "bicycles", "volcanoes", "bees")
           for q in ("Tell me about", "Write two sentences on", "What is special about", "Explain")]


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_tflops(dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    seconds = timed(lambda: [a @ b for _ in range(reps)], repeat=2)
    return 2 * n ** 3 * reps / seconds / 1e12


def generation(loaded, new_tokens: int, batch: int, repeat: int) -> dict:
    model, tok = loaded.model, loaded.tokenizer
    prompts = PROMPTS[:batch]
    # the same number of new tokens in every variant: no early stop at end-of-sequence
    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=batch)
    patched = attach_patch(model, tok, num_tokens=50)
    with patched.disable_adapter():
        generate(patched, tok, prompts[:2], GenerationConfig(max_new_tokens=4))  # warm-up
    with patched.disable_adapter():
        base = timed(lambda: generate(patched, tok, prompts, cfg), repeat)
    cached = timed(lambda: generate(patched, tok, prompts, cfg), repeat)
    return {"unpatched_s": base, "patched_cached_s": cached, "overhead_cached": cached / base - 1,
            "batch": batch, "new_tokens": new_tokens, "patch_tokens": 50}


def _clock(times: list[float]):
    """A trainer callback appending each optimisation step's seconds to ``times``."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    return Clock()


def _sft_examples(n: int) -> list[dict]:
    return [{"prompt": PROMPTS[i % len(PROMPTS)], "completion": "Here is a short and helpful answer about it, with "
             "two clear sentences that stay on topic and avoid anything harmful."} for i in range(n)]


def train_step(model_name: str, dtype: str, steps: int, batch: int, tokens: int) -> dict:
    loaded = load_model(model_name, dtype)
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=tokens)
    cfg = TrainConfig(batch_size=batch, sft_epochs=1, max_steps=steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_sft_trainer(model, loaded.tokenizer, _sft_examples(batch * (steps + 1)), cfg, tmp)
        times = []
        trainer.add_callback(_clock(times))
        trainer.train()
        seqs = [len(x) for x in trainer.train_dataset["input_ids"]]
    step = sum(times[1:]) / len(times[1:])  # the first step warms up
    tokens_per_step = (sum(seqs) / len(seqs) + tokens) * batch
    return {"dtype": dtype, "seconds_per_step": step, "tokens_per_s": tokens_per_step / step,
            "params": sum(p.numel() for p in loaded.model.parameters())}


MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"}
ATTENTION = ("scaled_dot_product", "flash_attention")


def step_profile(model_name: str, steps: int, batch: int, tokens: int) -> dict:
    """Where a bf16 SFT step's time goes, by operator (torch.profiler's self CPU time over ``steps`` steps):
    matrix products, attention, and everything else (elementwise, norms, copies, the optimiser)."""
    from torch.profiler import ProfilerActivity, profile

    loaded = load_model(model_name, "bf16")
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=tokens)
    cfg = TrainConfig(batch_size=batch, sft_epochs=1, max_steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_sft_trainer(model, loaded.tokenizer, _sft_examples(batch * steps), cfg, tmp)
        trainer.train()  # warm-up outside the profile
        trainer = make_sft_trainer(model, loaded.tokenizer, _sft_examples(batch * steps), cfg, tmp)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL)
    attention = sum(e.self_cpu_time_total for e in events if any(a in e.key for a in ATTENTION))
    top = sorted(((e.key, e.self_cpu_time_total / total) for e in events if e.key not in MATMUL), key=lambda t: -t[1])
    return {"matmul_share": matmul / total, "attention_share": attention / total,
            "other_share": 1 - (matmul + attention) / total, "top_other": top[:8]}


def dpo_reference(loaded, steps: int, batch: int) -> dict:
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=20)
    pairs = [{"prompt": p, "chosen": "I can help with that: here is a short, kind answer.",
              "rejected": "No. Figure it out yourself, it is not my problem at all."} for p in PROMPTS[:batch * 2]]
    cfg = TrainConfig(batch_size=batch, dpo_epochs=steps / 2)  # 2 batches, ``steps`` steps: the usual >1 epoch
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer = make_dpo_trainer(model, loaded.tokenizer, pairs, cfg, tmp)
        times = []
        trainer.add_callback(_clock(times))
        trainer.train()
        out["precomputed_s"] = time.perf_counter() - start
        data = trainer.train_dataset
        # every step runs the policy on a batch of chosen and rejected sequences (prompt + answer + the patch)
        lengths = [2 * len(p) + len(c) + len(r) for p, c, r in
                   zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
        step = sum(times[1:]) / max(1, len(times[1:]))
        out["seconds_per_step"] = step
        out["tokens_per_s"] = (sum(lengths) / len(lengths) + 2 * 20) * batch / step
        from trl import DPOConfig, DPOTrainer

        from compose.train import _dense_head, _drop_extra_adapters, _training_args, dpo_dataset, use_dense_lm_head

        args = _training_args(DPOConfig, cfg, cfg.dpo_epochs, cfg.dpo_lr, tmp, beta=cfg.beta,
                              precompute_ref_log_probs=False)
        base = model.get_base_model()
        saved = base.__dict__.get("forward")
        start = time.perf_counter()
        plain = DPOTrainer(model=model, args=args, train_dataset=dpo_dataset(pairs), processing_class=loaded.tokenizer)
        if _dense_head():  # the same LM head in both variants: only the reference differs
            use_dense_lm_head(model, ("log_probs", "entropy", "mean_logits", "is_top1"))
        plain.train()
        out["every_step_s"] = time.perf_counter() - start
        _drop_extra_adapters(model)
        if saved is None:
            base.__dict__.pop("forward", None)
    out["speedup"] = out["every_step_s"] / out["precomputed_s"]
    out["steps"] = steps
    return out


def evaluation(loaded, n: int, new_tokens: int) -> dict:
    model, tok = loaded.model, loaded.tokenizer
    prompts = PROMPTS[:n]
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=32)
    batched = timed(lambda: generate(model, tok, prompts, cfg))
    one = timed(lambda: [generate(model, tok, [p], cfg) for p in prompts])
    return {"batched_s": batched, "one_at_a_time_s": one, "speedup": one / batched, "prompts": n,
            "new_tokens": new_tokens}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    p.add_argument("--run-json", help="results.json of a finished compose run (wall time, peak memory)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = p.parse_args()
    if not cpu_has_fast_bf16():  # bf16 is emulated: one 2048-cube product takes about a minute (2 AVX2 cores)
        print("perf.py compares bf16 with fp32 against the bf16 matmul bound, and this CPU has no native bf16 "
              "(AVX512-BF16 or AMX); run it on one that has", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    results = {"machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "python": platform.python_version(), "platform": platform.platform()}}

    results["matmul_tflops"] = {"bf16": matmul_tflops(torch.bfloat16), "fp32": matmul_tflops(torch.float32)}
    print(f"matmul 2048^3: bf16 {results['matmul_tflops']['bf16']:.3f} TFLOP/s, "
          f"fp32 {results['matmul_tflops']['fp32']:.3f} TFLOP/s")

    loaded = load_model(args.model)
    g = results["generation"] = generation(loaded, 64, 32, 1 if args.quick else 2)
    print(f"generation (batch 32, 64 new tokens, 50-token patch): unpatched {g['unpatched_s']:.2f}s, "
          f"patched (cached prefix) {g['patched_cached_s']:.2f}s ({g['overhead_cached']:+.1%})")

    e = results["evaluation"] = evaluation(loaded, 16 if args.quick else 32, 32)
    print(f"evaluation ({e['prompts']} prompts, {e['new_tokens']} tokens): batched {e['batched_s']:.2f}s vs one at a "
          f"time {e['one_at_a_time_s']:.2f}s: {e['speedup']:.1f}x")

    d = results["dpo"] = dpo_reference(loaded, 3 if args.quick else 4, 8)
    print(f"DPO {d['steps']} steps: precomputed reference {d['precomputed_s']:.1f}s vs every step "
          f"{d['every_step_s']:.1f}s: {d['speedup']:.2f}x")

    steps = 3 if args.quick else 5
    bf16 = train_step(args.model, "bf16", steps, 8, 20)
    fp32 = train_step(args.model, "fp32", steps, 8, 20)
    flops_per_token = 4 * bf16["params"]  # forward 2N + backward through activations 2N (frozen weights)
    achieved = bf16["tokens_per_s"] * flops_per_token / 1e12
    results["training"] = {"bf16": bf16, "fp32": fp32, "speedup": fp32["seconds_per_step"] / bf16["seconds_per_step"],
                           "flops_per_token": flops_per_token, "achieved_tflops": achieved,
                           "utilisation": achieved / results["matmul_tflops"]["bf16"]}
    t = results["training"]
    print(f"SFT step (batch 8): bf16 {bf16['seconds_per_step']:.2f}s vs fp32 {fp32['seconds_per_step']:.2f}s: "
          f"{t['speedup']:.2f}x; {bf16['tokens_per_s']:.0f} tokens/s = {achieved:.3f} TFLOP/s = "
          f"{t['utilisation']:.1%} of the measured bf16 matmul throughput")

    d["utilisation"] = d["tokens_per_s"] * flops_per_token / 1e12 / results["matmul_tflops"]["bf16"]
    print(f"DPO step (batch 8 pairs): {d['tokens_per_s']:.0f} tokens/s = {d['utilisation']:.1%} of the bound")
    prof = results["profile"] = step_profile(args.model, 2 if args.quick else 3, 8, 20)
    print(f"SFT step profile: matmul {prof['matmul_share']:.0%}, attention {prof['attention_share']:.0%}, "
          f"other {prof['other_share']:.0%} of the time; largest others: "
          + ", ".join(f"{k} {v:.0%}" for k, v in prof["top_other"][:5]))

    if args.run_json:
        r = json.loads(Path(args.run_json).read_text())
        results["run"] = {k: r.get(k) for k in ("run", "strategy", "wall_seconds", "peak_rss_mb", "phases")}
        print(f"compose run {r.get('strategy')}: wall {r.get('wall_seconds', 0):.0f}s, "
              f"peak memory {r.get('peak_rss_mb', float('nan')):.0f} MB")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Performance (this machine)", "", "| figure | value |", "|---|---|",
             f"| bf16 / fp32 matmul TFLOP/s | {results['matmul_tflops']['bf16']:.3f} / "
             f"{results['matmul_tflops']['fp32']:.3f} |",
             f"| patch overhead, cached prefix (goal <= +2%) | {g['overhead_cached']:+.1%} |",
             f"| batched vs one-at-a-time evaluation (goal >= 5x) | {e['speedup']:.1f}x |",
             f"| DPO precomputed reference vs every step | {d['speedup']:.2f}x |",
             f"| SFT step bf16 vs fp32 | {t['speedup']:.2f}x |",
             f"| SFT tokens/s, share of the bf16 bound (goal >= 35%) | {bf16['tokens_per_s']:.0f}, "
             f"{t['utilisation']:.1%} |",
             f"| DPO tokens/s, share of the bf16 bound (goal >= 35%) | {d['tokens_per_s']:.0f}, "
             f"{d['utilisation']:.1%} |",
             f"| SFT step time in matmul / attention / other | {prof['matmul_share']:.0%} / "
             f"{prof['attention_share']:.0%} / {prof['other_share']:.0%} |"]
    if "run" in results:
        lines.append(f"| `compose run` wall time / peak memory | {results['run']['wall_seconds']:.0f}s / "
                     f"{results['run'].get('peak_rss_mb') or float('nan'):.0f} MB |")
        phases = results["run"].get("phases") or {}
        if phases:
            lines += ["", "`compose run` wall time by phase (seconds, from its results.json):", "",
                      "| phase | seconds |", "|---|---|", *(f"| {k} | {v:.0f} |" for k, v in phases.items())]
    lines += ["", "Largest non-matmul operators of an SFT step (share of its time): "
              + ", ".join(f"{k} {v:.1%}" for k, v in prof["top_other"])]
    kept = ""  # sections other benches append (e.g. experiments/bench/scaleout.py's "## Scale-out") stay
    if (out / "perf.md").is_file():
        old_text = (out / "perf.md").read_text()
        kept = old_text[old_text.index("\n## "):] if "\n## " in old_text else ""
    (out / "perf.md").write_text("\n".join(lines) + "\n" + kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
