"""``compose generate``: chat with a model, optionally patched."""

from __future__ import annotations

import argparse

from compose.cli.arguments import add_model_arguments
from compose.cli.patch import apply_patches
from compose.errors import ComposeError
from compose.generation import MAX_SAMPLES, GenerationConfig, generate
from compose.models import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--patch", action="append", default=[], metavar="DIR",
                   help="patch directory to apply (repeatable: several patches are ordered by their dependencies)")
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="at most this many tokens per response (bounded by the model's context)")
    p.add_argument("--samples", type=int, default=1, help=f"responses per prompt (> 1 samples; at most {MAX_SAMPLES})")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="continue the text instead of using the chat template")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")


def main(args) -> int:
    if args.max_new_tokens < 1:
        raise ComposeError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 1 <= args.samples <= MAX_SAMPLES:
        raise ComposeError(f"--samples must be from 1 to {MAX_SAMPLES}, got {args.samples}")
    if not args.temperature > 0 or args.temperature == float("inf"):
        raise ComposeError(f"--temperature must be a positive number (1.0: the model's own distribution), "
                           f"got {args.temperature}")
    loaded = load_model(args.model, args.dtype)
    model = apply_patches(loaded, args.patch)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, samples=args.samples,
                              temperature=args.temperature, seed=args.seed)
    outputs = generate(model, loaded.tokenizer, args.prompts, config, chat=not args.raw)
    for prompt, responses in zip(args.prompts, outputs):
        print(f">>> {prompt}")
        for r in responses:
            print(r)
        print()
    return 0
