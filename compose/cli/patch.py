"""``compose patch inspect | verify | apply``: patch directories as artifacts; ``apply_patches`` for the commands
that run a patched model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compose.artifact import load_patch, read_manifest, save_patch, verify_patch
from compose.errors import ComposeError
from compose.io import check_output_dir
from compose.models import load_model
from compose.patch import attach_patch
from compose.patchset import compose_matrices, describe_patch_set, load_patch_set, resolve_patch_set
from risks import canonical_name


def apply_patches(loaded, patch_dirs: list[str]):
    """The model with ``patch_dirs`` applied (one patch, or several composed in dependency order)."""
    if not patch_dirs:
        return loaded.model
    if len(patch_dirs) == 1:
        return load_patch(loaded, patch_dirs[0])
    return load_patch_set(loaded, patch_dirs, canonical_name)


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def main(args) -> int:
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
        fingerprint = load_model(args.model, args.dtype).fingerprint
    manifest = verify_patch(args.dir, fingerprint)
    what = f" and matches base model {args.model}" if args.model else ""
    print(f"ok: patch '{manifest['name']}' {manifest['version']}: {len(manifest['files'])} files verified{what}")
    return 0


def _apply(args) -> int:
    check_output_dir(args.output, "--output", force=args.force, inputs=args.dirs, owned=_written_by_apply)
    loaded = load_model(args.model or _patches_base_model(args.dirs), args.dtype)
    manifests = resolve_patch_set(args.dirs, loaded.fingerprint, canonical_name)
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
    models = {(read_manifest(d).get("base_model") or {}).get("name") for d in dirs}
    if len(models) != 1 or None in models:
        raise ComposeError(f"the patches name different base models ({', '.join(sorted(map(str, models)))}); "
                           f"give --model")
    return models.pop()


def _written_by_apply(folder: Path) -> bool:
    """True for a patch that an earlier `compose patch apply` wrote (it may be replaced without --force)."""
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
