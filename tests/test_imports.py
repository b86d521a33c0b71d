"""Every import in fedi's own code resolves, the ones inside functions included.

Lazy imports (inside a function, for start-up time) are only executed when their command runs; a name
moved or deleted elsewhere (say, a constant that became part of the app catalog) would break that command
at run time and nowhere else. This reads every ``import``/``from ... import`` of provision/ and stacks/
and resolves it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = ("provision", "stacks")


def _imports() -> list[tuple[str, str, str | None]]:
    """(where, module, name or None) for every absolute import of fedi's own modules."""
    found = []
    for package in OWN:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in OWN:
                    found += [(f"{where}:{node.lineno}", node.module, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    found += [
                        (f"{where}:{node.lineno}", alias.name, None)
                        for alias in node.names
                        if alias.name.split(".")[0] in OWN
                    ]
    return found


def _unresolved(where: str, module: str, name: str | None) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return f"{where}: {module}: {exc}"
    if name is None or hasattr(mod, name):
        return None
    try:
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return f"{where}: {module} has no {name!r}"
    return None


def test_every_import_of_fedis_own_modules_resolves() -> None:
    imports = _imports()
    assert len(imports) > 100  # the scan saw the code
    broken = [msg for msg in (_unresolved(*i) for i in imports) if msg]
    assert not broken, broken


def test_the_check_finds_a_name_that_is_gone() -> None:
    assert _unresolved("x.py:1", "provision.spec", "APPS") == "x.py:1: provision.spec has no 'APPS'"
    assert _unresolved("x.py:2", "provision.no_such_module", None).startswith("x.py:2: provision.no_such_module:")
    assert _unresolved("x.py:3", "provision.apps", "get") is None
