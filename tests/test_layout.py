"""The package layout keeps the data flow and the process boundary visible: checked, not hoped for.

    cli/ → kube/ → sources/ → coordinator/ → wire/ → worker/ → probe/

The worker process may load only ``wire``, ``worker`` and ``probe``; ``wire`` is the contract both
processes import, so it depends on nothing else of ehc; nothing but the ``ehc`` command imports ``cli``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ehc"
WORKER_SIDE = {"wire", "worker", "probe"}


def _imports() -> dict[str, set[str]]:
    """Module path (relative to ehc/) → the ehc modules it imports, lazily or not."""
    out: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.update(
                    f"{node.module}.{a.name}" if node.module == "ehc" else node.module for a in node.names
                )
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[str(path.relative_to(PACKAGE))] = {n for n in names if n == "ehc" or n.startswith("ehc.")}
    return out


def _package(module: str) -> str:
    """``ehc.wire.messages`` → ``wire``; a top-level module is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(rule: str, sources: set[str], forbidden: set[str]) -> list[str]:
    bad = []
    for where, names in _imports().items():
        if where.split("/")[0] in sources or (where.endswith(".py") and "" in sources and "/" not in where):
            bad += [f"{where} imports {n} ({rule})" for n in sorted(names) if _package(n) in forbidden]
    return bad


def test_the_package_has_the_documented_folders() -> None:
    for folder in ("cli", "kube", "sources", "coordinator", "wire", "worker", "probe"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize(
    ("rule", "packages", "forbidden"),
    [
        ("the worker side never reaches into the coordinator's", {"worker", "probe"},
         {"kube", "sources", "coordinator", "cli", "sim"}),
        ("wire/ imports nothing of ehc but itself", {"wire"},
         {"kube", "sources", "coordinator", "cli", "sim", "worker", "probe"}),
        ("kube/ talks to the API server and knows nothing of what ehc does with it", {"kube"},
         {"sources", "coordinator", "cli", "sim"}),
        ("sources/ know nothing of the coordinator that drives them", {"sources"}, {"coordinator", "cli", "sim"}),
        ("only the ehc command imports cli/", {"kube", "sources", "coordinator", "wire", "worker", "probe", "sim"},
         {"cli"}),
    ],
)  # fmt: skip
def test_import_rule(rule: str, packages: set[str], forbidden: set[str]) -> None:
    assert _violations(rule, packages, forbidden) == []


def test_the_worker_process_loads_only_its_own_side() -> None:
    code = (
        "import json, sys; import ehc.worker.__main__; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ehc.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert loaded and {_package(m) for m in loaded} <= WORKER_SIDE, loaded
