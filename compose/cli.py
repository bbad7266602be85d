"""The ``compose`` command line.

Every sub-command lives in the module that implements it and exposes ``add_arguments(parser)`` and
``main(args) -> int``; this file only lists them. User errors (``ComposeError``, bad arguments) print one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from compose.errors import ComposeError, one_line, os_error_message
from compose.hardware import configure_threads

# name -> (one-line help, "module:add_arguments", "module:main")
COMMANDS = {
    "run": ("compose patches for several risks with a strategy; measure forgetting",
            "compose.run:add_arguments", "compose.run:main"),
    "eval": ("evaluate a model (optionally patched) on risks",
             "compose.evaluate:add_eval_arguments", "compose.evaluate:eval_main"),
    "risks": ("list the registered risks", "compose.evaluate:add_risks_arguments", "compose.evaluate:risks_main"),
    "report": ("write the forgetting reports of finished runs", "compose.run:add_report_arguments",
               "compose.run:report_main"),
    "search": ("search per-risk token counts with Optuna", "compose.search:add_arguments", "compose.search:main"),
    "graph": ("print the patch order of a run or config and draw its dependency graph",
              "compose.graph_cli:add_arguments", "compose.graph_cli:main"),
    "generate": ("chat with a model, optionally patched", "compose.cli:add_generate_arguments",
                 "compose.cli:generate_main"),
    "patch": ("inspect and verify patch directories", "compose.cli:add_patch_arguments", "compose.cli:patch_main"),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


THREADS_HELP = ("CPU threads for torch (default: OMP_NUM_THREADS if set, else the CPUs this process may use: "
                "affinity mask and cgroup quota); give each job its own share when running several side by side")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compose", description="Patch the safety policy of a language model with small soft-prompt patches, "
                                    "one per risk, composed into one.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    parser.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                        help="load risk plugins from a .py file or an importable module (repeatable)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_ref, main_ref) in COMMANDS.items():
        add = _load(add_ref)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.add_argument("--plugin", action="append", default=[], dest="sub_plugins", metavar="PATH_OR_MODULE",
                       help="load risk plugins from a .py file or an importable module (repeatable)")
        p.add_argument("--threads", type=_positive_int, default=None, dest="sub_threads", metavar="N",
                       help=THREADS_HELP)
        p.set_defaults(handler=main_ref)
    return parser


# --- generate -----------------------------------------------------------------------------------------------

def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from compose.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"base model: {DEFAULT_MODEL} (embedded, default), tiny-random, a local dir or a HF id")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 where fast), bf16, fp32")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    from compose.generation import MAX_SAMPLES

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


def apply_patches(loaded, patch_dirs: list[str]):
    """The model with ``patch_dirs`` applied (one patch, or several composed in dependency order)."""
    from compose.artifact import load_patch

    if not patch_dirs:
        return loaded.model
    if len(patch_dirs) == 1:
        return load_patch(loaded, patch_dirs[0])
    from compose.patchset import load_patch_set

    return load_patch_set(loaded, patch_dirs)


def generate_main(args) -> int:
    from compose.generation import MAX_SAMPLES, GenerationConfig, generate
    from compose.models import load_model

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


# --- patch inspect / verify ---------------------------------------------------------------------------------

def add_patch_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="patch_command", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="show a patch's manifest")
    inspect.add_argument("dir")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    verify = sub.add_parser("verify", help="check checksums (and, with --model, the base model)")
    verify.add_argument("dir")
    verify.add_argument("--model", default=None, help="also check that the patch was built for this base model")
    verify.add_argument("--dtype", default="auto")
    apply = sub.add_parser("apply", help="compose several patches into one, ordered by their dependencies")
    apply.add_argument("dirs", nargs="+", metavar="DIR")
    apply.add_argument("--model", default=None,
                       help="base model (default: the one the patches were built for, from their manifests)")
    apply.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 where fast), bf16, fp32")
    apply.add_argument("--output", required=True, help="directory of the composed patch")
    apply.add_argument("--name", help="name of the composed patch (default: the output folder's name)")
    apply.add_argument("--version", default="1.0.0")
    apply.add_argument("--force", action="store_true",
                       help="replace an --output folder that is not a patch written by `compose patch apply`")


def patch_main(args) -> int:
    from compose.artifact import read_manifest, verify_patch

    if args.patch_command == "apply":
        return _apply(args)
    if args.patch_command == "inspect":
        manifest = read_manifest(args.dir)
        if args.json:
            print(json.dumps(manifest, indent=2))
        else:
            print(format_manifest(manifest))
        return 0
    fingerprint = None
    if args.model:
        from compose.models import load_model

        fingerprint = load_model(args.model, args.dtype).fingerprint
    manifest = verify_patch(args.dir, fingerprint)
    what = f" and matches base model {args.model}" if args.model else ""
    print(f"ok: patch '{manifest['name']}' {manifest['version']}: {len(manifest['files'])} files verified{what}")
    return 0


def _apply(args) -> int:
    from compose.artifact import save_patch
    from compose.io import check_output_dir
    from compose.models import load_model
    from compose.patch import attach_patch
    from compose.patchset import compose_matrices, describe_patch_set, resolve_patch_set

    check_output_dir(args.output, "--output", force=args.force, inputs=args.dirs, owned=_written_by_apply)
    loaded = load_model(args.model or _patches_base_model(args.dirs), args.dtype)
    manifests = resolve_patch_set(args.dirs, loaded.fingerprint)
    print(f"order: {describe_patch_set(manifests)}")
    weights, segments = compose_matrices(manifests)
    model = attach_patch(loaded.model, loaded.tokenizer, num_tokens=weights.shape[0], init=weights)
    conflicts = sorted({c for m in manifests for c in m.get("conflicts", [])})
    out = save_patch(model, args.output, name=args.name or Path(args.output).name, version=args.version,
                     segments=segments, base_model=loaded.name, fingerprint=loaded.fingerprint,
                     training={"composed_from": [f"{m['name']} {m['version']}" for m in manifests]},
                     conflicts=conflicts)
    print(f"wrote {out} ({weights.shape[0]} tokens)")
    return 0


def _patches_base_model(dirs: list[str]) -> str:
    """The base model the patches name in their manifests (one for all of them, or a one-line error)."""
    from compose.artifact import read_manifest

    models = {(read_manifest(d).get("base_model") or {}).get("name") for d in dirs}
    if len(models) != 1 or None in models:
        raise ComposeError(f"the patches name different base models ({', '.join(sorted(map(str, models)))}); "
                           f"give --model")
    return models.pop()


def _written_by_apply(folder: Path) -> bool:
    """True for a patch that an earlier `compose patch apply` wrote (it may be replaced without --force)."""
    from compose.artifact import read_manifest

    try:
        return "composed_from" in (read_manifest(folder).get("training") or {})
    except ComposeError:
        return False


def format_manifest(m: dict) -> str:
    base = m["base_model"]
    lines = [f"patch     {m['name']} {m['version']}",
             f"base      {base.get('name')} ({base.get('fingerprint')})",
             f"tokens    {m['num_virtual_tokens']}"]
    for seg in m["risks"]:
        lines.append(f"  {seg['risk']:<14} tokens [{seg['start']}, {seg['start'] + seg['tokens']})")
    for key in ("requires", "after", "conflicts"):
        if m.get(key):
            lines.append(f"{key:<9} {', '.join(m[key])}")
    if m.get("training"):
        t = m["training"]
        lines.append("training  " + ", ".join(f"{k}={v}" for k, v in t.items() if not isinstance(v, (dict, list))))
    for risk, metric in (m.get("metrics") or {}).items():
        if isinstance(metric, dict) and "safety" in metric:
            lines.append(f"metric    {risk}: safety {metric['safety']:.3f}")
    lines.append(f"files     {', '.join(m['files'])}")
    lines.append(f"created   {m.get('created')} by compose {m.get('compose_version')}")
    return "\n".join(lines)


# --- entry point --------------------------------------------------------------------------------------------

def check_plugin(spec: str) -> str:
    """A ``--plugin`` value that names a file must name a Python source file (a data file is refused)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".py":
        raise ComposeError(f"--plugin '{spec}' is not a Python file; give a .py file or an importable module name")
    return spec


def _quiet_libraries(debug: bool) -> None:
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("transformers", "trl", "peft", "datasets", "accelerate", "httpx", "urllib3", "optuna"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    _quiet_libraries(args.debug)
    configure_threads(getattr(args, "sub_threads", None) or args.threads)
    try:
        plugins = args.plugin + getattr(args, "sub_plugins", [])
        if plugins:
            from risks import load_plugin

            for plugin in plugins:
                load_plugin(check_plugin(plugin))
        return int(_load(args.handler)(args) or 0)
    except ComposeError as exc:
        if args.debug:
            raise
        print(f"compose: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused: full disk, read-only or forbidden folder, missing file
        if args.debug:
            raise
        print(f"compose: error: {one_line(os_error_message(exc))}", file=sys.stderr)
        return ComposeError.exit_code
    except KeyboardInterrupt:
        print("compose: interrupted; finished stages are kept and a re-run resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
