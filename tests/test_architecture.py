"""The layers: the library (``compose/*``) imports nothing from the plugins (``risks/``, ``strategies/``) or the
application (``compose/cli/``); the plugins import nothing from the application; no import loops; and
``compose --help`` loads none of the heavy libraries."""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
COMPAT: set[str] = set()  # old import paths kept for a release, pointing from the library up into the application
ENTRY_POINTS = {"compose.__main__"}  # `python -m compose`: the command line itself


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level_only: bool = False) -> list[tuple[str, str]]:
    """``(imported module, where)`` for every import in ``path``; ``where`` is the function it sits in, if any."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if module_level_only:
                    continue
                inner = child.name
            if isinstance(child, ast.Import):
                found.extend((alias.name, where) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.module, where))
            visit(child, inner)

    visit(tree, "")
    return found


def sources(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def layer(module: str) -> str:
    if module == "compose.cli" or module.startswith("compose.cli."):
        return "application"
    return module.split(".")[0]


def test_library_imports_no_plugin_and_no_application():
    wrong = []
    for path in sources("compose"):
        name = module_name(path)
        if layer(name) != "compose" or name in COMPAT | ENTRY_POINTS:
            continue
        for target, where in imports(path):
            if layer(target) in ("risks", "strategies", "application") and f"{name}.{where}" not in COMPAT:
                wrong.append(f"{name} ({where or 'module level'}) imports {target}")
    assert not wrong, wrong


def test_plugins_import_no_application():
    wrong = [f"{module_name(p)} imports {t}" for p in sources("risks", "strategies") for t, _ in imports(p)
             if layer(t) == "application"]
    assert not wrong, wrong


def test_no_import_loops():
    graph = nx.DiGraph()
    for path in sources("compose", "risks", "strategies"):
        name = module_name(path)
        for target, _ in imports(path, module_level_only=True):
            if layer(target) in ("compose", "risks", "strategies", "application") and target != name:
                graph.add_edge(name, target)
    assert list(nx.simple_cycles(graph)) == []


def test_help_imports_no_heavy_library():
    code = ("import sys; from compose.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    done = subprocess.run([sys.executable, "-m", "compose", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "strategies" in done.stdout
