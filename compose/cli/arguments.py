"""Arguments several commands share: the base model and the output folder (``--out``, with the deprecated
``--output-dir``)."""

from __future__ import annotations

import argparse
import sys

from compose.models import DEFAULT_MODEL


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"base model: {DEFAULT_MODEL} (embedded, default), tiny-random, a local dir or a HF id")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 where fast), bf16, fp32")


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: sets the new flag's value and warns (once per command line) to use the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warned = getattr(namespace, "_warned_aliases", set())
        if option_string not in warned:
            print(f"compose: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
            namespace._warned_aliases = warned | {option_string}
        setattr(namespace, self.dest, values)


def add_out_argument(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--out DIR`` (the folder a command writes), and ``--output-dir``, its deprecated spelling."""
    p.add_argument("--out", metavar="DIR", help=help_text)
    p.add_argument("--output-dir", dest="out", metavar="DIR", action=DeprecatedAlias, new="--out",
                   help="deprecated spelling of --out")
