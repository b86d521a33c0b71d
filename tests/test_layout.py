"""The layout of provision/ holds: folders named after what a user does, no import cycles, pulumi only
where the stack program runs, and modules short enough to read.

Imports are read from the source (every import statement, also those inside functions), so a cycle
hidden behind a lazy import is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "provision"

FOLDERS = {
    "access",
    "apps",
    "billing",
    "cli",
    "data",
    "lifecycle",
    "providers",
    "providers/hetzner",
    "providers/local",
    "remote",
    "render",
}

# The only modules over MAX_LINES, each with its reason. Shorter is better: shrink, then remove the entry.
MAX_LINES = 400
LONG = {
    "provision/billing/cost.py": "Hetzner's price list: live fetch, cache, dated table and the per-line arithmetic",
    "provision/billing/hooks.py": "the billing hook end to end: events, signing, outbox, delivery",
    "provision/lifecycle/stack.py": "plan, up, status, resize and down, the same for every provider",
    "provision/lifecycle/backup.py": "every backup command's remote call and the parsing of its JSON",
    "provision/providers/hetzner/provider.py": "the Hetzner provider: stack outputs, secrets, zones, plan and up",
    "provision/providers/local/machine.py": "the nspawn machine: boot, exec, stop, destroy and its command line",
    "provision/providers/local/provider.py": "the local provider: machines as stacks, with state, secrets and expiry",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module named by an import statement in ``path`` (``from a import b`` names a.b when b is a module)."""
    known = modules()
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                named.add(full if full in known else node.module)
    return named


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports(path) if m in known and m != name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_provision_modules():
    assert cycles(graph()) == []


def test_only_the_hetzner_provider_and_stacks_import_pulumi():
    allowed = (PACKAGE / "providers" / "hetzner", ROOT / "stacks")
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "stacks").rglob("*.py")]:
        uses = any(m == "pulumi" or m.startswith(("pulumi.", "pulumi_")) for m in imports(path))
        if uses and not any(path.is_relative_to(folder) for folder in allowed):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_folders_of_provision_are_the_expected_ones():
    folders = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert folders == FOLDERS


def test_no_module_is_over_the_limit_except_the_listed_ones():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {path for path, n in lengths.items() if n > MAX_LINES}
    assert over <= set(LONG), f"over {MAX_LINES} lines: {sorted(over - set(LONG))}"
    assert all(lengths.get(path, 0) > MAX_LINES for path in LONG), "a listed module is short now: unlist it"


def test_both_providers_bind_the_contract_with_its_signatures():
    import inspect

    import pytest

    from provision.providers import Provider
    from provision.providers.hetzner.provider import HetznerProvider
    from provision.providers.local.provider import LocalProvider

    for cls in (HetznerProvider, LocalProvider):
        assert issubclass(cls, Provider) and not inspect.isabstract(cls)
        for name in Provider.__abstractmethods__:
            contract = inspect.signature(getattr(Provider, name)).parameters
            own = inspect.signature(getattr(cls, name)).parameters
            assert list(own)[: len(contract)] == list(contract), f"{cls.__name__}.{name}"

    class Half(Provider):  # a provider that forgets a method cannot be made
        name = "half"

    with pytest.raises(TypeError):
        Half()
