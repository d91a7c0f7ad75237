"""The package's layers point one way (README, "Architecture"), read from every module's imports.

Imports are taken from the syntax tree of each file under ``megatron_salt/``, including the
ones inside functions (a lazy import is still a dependency), so a new import against the
layers fails here rather than in review.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "megatron_salt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, as absolute names.

    ``from a.b import c`` counts as ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Our module -> the modules of ours (and ``tools``) it imports."""
    graph = {}
    for path in sorted(LIB.rglob("*.py")):
        name = module_name(path)
        imports = imported_modules(path.read_text(), name, path.name == "__init__.py")
        graph[name] = {m for m in imports if _ours(m) or _is_tools(m)}
    return graph


def cli_modules() -> set[str]:
    """Command-line modules: the console scripts and what tools/ and pretrain_salt.py run."""
    found = set(re.findall(r"=\s*(megatron_salt[\w.]*):", (REPO / "setup.py").read_text()))
    for script in [*sorted((REPO / "tools").glob("*.py")), REPO / "pretrain_salt.py"]:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron_salt"):
                if any(alias.name.endswith("main") for alias in node.names):
                    found.add(node.module)
    return found


def _ours(module: str) -> bool:
    return module == "megatron_salt" or module.startswith("megatron_salt.")


def _is_tools(module: str) -> bool:
    return module == "tools" or module.startswith("tools.")


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def layer_violations(graph: dict[str, set[str]], clis: set[str]) -> list[str]:
    """One line per import that points the wrong way."""
    lib = "megatron_salt"
    bad = []
    for module, imports in sorted(graph.items()):
        for target in sorted(imports):
            why = None
            if _is_tools(target):
                why = "the library never imports tools/"
            elif _within(module, f"{lib}.distill") and not _within(target, f"{lib}.distill"):
                why = "distill/ imports nothing else of ours"
            elif _within(module, f"{lib}.compat") and not _within(target, f"{lib}.compat"):
                why = "compat/ imports nothing else of ours"
            elif _within(module, f"{lib}.data") and (
                _within(target, f"{lib}.training", f"{lib}.selection")
                or (target in clis and not _within(target, f"{lib}.data"))
            ):
                why = "data/ imports nothing from training/, selection/ or a command line"
            elif _within(module, f"{lib}.selection", f"{lib}.teacher") and _within(
                target, f"{lib}.training"
            ):
                why = "selection/ and the teacher import nothing from training/"
            elif module == f"{lib}.checkpoint_dir" and _within(
                target, f"{lib}.training", f"{lib}.selection", f"{lib}.data", f"{lib}.teacher"
            ):
                why = "checkpoint_dir.py lies below training/, selection/, data/ and the teacher"
            if why:
                bad.append(f"{module} imports {target}: {why}")
    return bad


def test_layers_point_one_way():
    graph = import_graph()
    # The parse sees the imports (lazy ones too), so an empty list below means something.
    assert "megatron_salt.teacher" in graph["megatron_salt.training.trainer"]
    assert "megatron_salt.selection.scoring" in graph["megatron_salt.selection.cli"]
    assert "megatron_salt.convert.megatron_lm" in graph["megatron_salt.checkpoint_dir"]
    assert {"megatron_salt.training.loop", "megatron_salt.selection.cli"} <= cli_modules()
    assert layer_violations(graph, cli_modules()) == []


def test_each_rule_catches_its_import():
    """Imports against each rule, written as they would be, are all reported."""
    sources = {
        "megatron_salt.distill.kd_loss": "from megatron_salt.config import KDConfig",
        "megatron_salt.compat.cpu": "def f():\n    import megatron_salt.parallel",
        "megatron_salt.data.preprocess": "from megatron_salt.selection.cli import score",
        "megatron_salt.data.encode": "from megatron_salt.convert import cli",
        "megatron_salt.data.pile": "from ..training import checkpointing",
        "megatron_salt.selection.scoring": "from megatron_salt.training.checkpointing import x",
        "megatron_salt.teacher": "from megatron_salt.training import arguments",
        "megatron_salt.checkpoint_dir": "from megatron_salt.data.pile import InputError",
        "megatron_salt.report": "from tools.compare_runs import main",
    }
    graph = {
        name: {m for m in imported_modules(src, name) if _ours(m) or _is_tools(m)}
        for name, src in sources.items()
    }
    reported = layer_violations(graph, {"megatron_salt.convert.cli"})
    assert sorted({line.split(" imports ")[0] for line in reported}) == sorted(sources)
    # What the layers allow passes.
    allowed = {
        "megatron_salt.distill.loss": {"megatron_salt.distill.shard"},
        "megatron_salt.training.kd_data": {"megatron_salt.selection.rules"},
        "megatron_salt.selection.preprocess_cli": {"megatron_salt.data.preprocess"},
        "megatron_salt.data.encode": {"megatron_salt.tokenizer", "megatron_salt.data.pile"},
    }
    assert layer_violations(allowed, {"megatron_salt.data.preprocess"}) == []
