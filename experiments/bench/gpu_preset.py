"""The ``paper`` preset (the published settings: 50 virtual tokens, 10 SFT epochs, then DPO) on a GPU, at the
published model size.

    python experiments/bench/gpu_preset.py [--shape llama-7b] [--risks harm] [--strategy sequential] \
        [--opt harmfulness:judge=phrases] [--out runs/gpu-preset]

No 7B checkpoint ships with compose and none can be downloaded at run time, so ``--shape llama-7b`` builds, on the
GPU and in-process, a randomly initialised network of Llama-2-7B's shape (32 layers, 4096 wide, 11008 MLP, 32k
vocabulary; 6.7B parameters) in bf16, with a byte-level BPE tokenizer trained on the risks' own prompts (so
prompts cost about as many tokens as with a real tokenizer). Its answers are noise: the risk metrics of such a run
mean nothing, but every computation the preset makes at 7B scale (teacher data, SFT, DPO, evaluation after every
stage, the forgetting matrix, the saved patch) runs at full size. ``--model NAME`` runs a real model instead (an
embedded one, a local directory).

Prints and writes (``OUT/gpu_preset.json``) the wall time of every phase, peak GPU memory, the bf16 matmul rate
measured at the start, and the patch's share of the model's parameters.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compose.cli.config import resolve, parse_option_args  # noqa: E402
from compose.cli.run import execute  # noqa: E402
from compose.io import atomic_write_json  # noqa: E402
from compose.models import (LoadedModel, contiguous_head_input, default_device, load_model, model_fingerprint,  # noqa: E402
                            train_tokenizer)
from risks import get_risk  # noqa: E402
from risks.base import SPLITS  # noqa: E402

SHAPES = {  # Llama-2-7B (the published papers' model class)
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    # the same code path at a size a CPU runs in a minute (a dry run of this script)
    "mini": dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024),
}


def prompt_corpus(risks: list[str]) -> list[str]:
    """Every built-in prompt of the run's risks (all splits): the text the tokenizer is trained on."""
    texts = []
    for name in risks:
        risk = get_risk(name)
        for split in SPLITS:
            texts += risk.prompts(split, 100_000)
    return texts


def random_model(shape: str, risks: list[str], device: str) -> LoadedModel:
    """A random network of ``shape`` in bf16 on ``device`` with a BPE tokenizer trained on the risks' prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    tokenizer = train_tokenizer(prompt_corpus(risks), SHAPES[shape]["vocab_size"])
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config.name_or_path = f"{shape}-random"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = True
    contiguous_head_input(model)
    return LoadedModel(model, tokenizer, f"{shape}-random", model_fingerprint(model), time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-7b", help="a random network of this shape")
    p.add_argument("--model", help="a real model instead (embedded name or local directory)")
    p.add_argument("--risks", default="harm")
    p.add_argument("--strategy", default="sequential")
    p.add_argument("--preset", default="paper")
    p.add_argument("--train-limit", type=int, help="fewer training prompts per risk than the preset's")
    p.add_argument("--eval-limit", type=int, help="fewer evaluation prompts per risk than the preset's")
    p.add_argument("--opt", action="append", default=[], help="RISK:KEY=VALUE, as compose run --opt")
    p.add_argument("--out", default="runs/gpu-preset")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("compose.run").setLevel(logging.DEBUG)  # each phase's seconds as it ends
    device = default_device()
    risks = args.risks.split(",")
    if args.model:
        loaded = load_model(args.model, device=device)
    else:
        loaded = random_model(args.shape, risks, device)
    flags = {"risks": args.risks, "strategy": args.strategy, "model": loaded.name, "preset": args.preset,
             "train_limit": args.train_limit, "eval_limit": args.eval_limit}
    if args.opt:
        flags["risk_options"] = parse_option_args(args.opt)
    cfg = resolve({}, options={}, **flags)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = execute(cfg, Path(args.out), loaded=loaded, force=True)
    wall = time.perf_counter() - start
    report = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "model": loaded.name, "model_parameters": results["parameters"]["base"],
        "build_or_load_seconds": round(loaded.load_seconds, 1), "risks": cfg.risks, "strategy": cfg.strategy,
        "preset": cfg.preset, "tokens": cfg.tokens, "parameters": results["parameters"], "wall_seconds": round(wall, 1),
        "phases": results.get("phases"),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.startswith("cuda") else None,
        "matmul_tflops": results["matmul_tflops"], "summary": results["summary"],
    }
    out = Path(args.out) / "gpu_preset.json"
    atomic_write_json(out, report)
    print(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
