"""The ``compose`` command line: the application layer on top of the library (``compose/*``) and the plugins
(``risks/``, ``strategies/``).

One module per command in this package, each with ``add_arguments(parser)`` and ``main(args) -> int``;
``COMMANDS`` lists them. A command's module is imported only when that command runs (or its ``--help`` is
asked for), so ``compose --help`` does not load torch. User errors (``ComposeError``, bad arguments) print one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from compose.errors import ComposeError, one_line, os_error_message
from compose.hardware import configure_threads

# name -> (one-line help, module with add_arguments and main); the help is here so that listing the commands
# imports none of them
COMMANDS = {
    "run": ("compose patches for several risks with a strategy; measure forgetting", "compose.cli.run"),
    "eval": ("evaluate a model (optionally patched) on risks", "compose.cli.eval"),
    "risks": ("list the registered risks", "compose.cli.risks"),
    "strategies": ("list the registered strategies and their options", "compose.cli.strategies"),
    "report": ("write the forgetting reports of finished runs", "compose.cli.report"),
    "search": ("search per-risk token counts with Optuna", "compose.cli.search"),
    "graph": ("print the patch order of a run or config and draw its dependency graph", "compose.cli.graph"),
    "generate": ("chat with a model, optionally patched", "compose.cli.generate"),
    "patch": ("inspect and verify patch directories", "compose.cli.patch"),
}
THREADS_HELP = ("CPU threads for torch (default: OMP_NUM_THREADS if set, else the CPUs this process may use: "
                "affinity mask and cgroup quota); give each job its own share when running several side by side")
PLUGIN_HELP = "load risk or strategy plugins from a .py file or an importable module (repeatable)"
GLOBAL_WITH_VALUE = ("--plugin", "--threads")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def make_parser(commands=None) -> argparse.ArgumentParser:
    """The parser; only the commands in ``commands`` (default: all) get their arguments, and so their module
    imported."""
    parser = argparse.ArgumentParser(
        prog="compose", description="Patch the safety policy of a language model with small soft-prompt patches, "
                                    "one per risk, composed into one.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    parser.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE", help=PLUGIN_HELP)
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            command = importlib.import_module(module)
            command.add_arguments(p)
            p.set_defaults(handler=command.main)
        p.add_argument("--plugin", action="append", default=[], dest="sub_plugins", metavar="PATH_OR_MODULE",
                       help=PLUGIN_HELP)
        p.add_argument("--threads", type=positive_int, default=None, dest="sub_threads", metavar="N",
                       help=THREADS_HELP)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not a global option or its value), or None."""
    words = iter(argv)
    for word in words:
        if word in GLOBAL_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser({command_of(argv)})
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    _quiet_libraries(args.debug)
    configure_threads(getattr(args, "sub_threads", None) or args.threads)
    try:
        plugins = args.plugin + getattr(args, "sub_plugins", [])
        if plugins:
            from compose.cli.plugins import load_plugin  # imports every registry: only when plugins are given

            for plugin in plugins:
                load_plugin(plugin)
        return int(args.handler(args) or 0)
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
