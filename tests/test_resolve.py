"""Which provider holds a named stack: one rule for every command (provision.lifecycle.resolve)."""

from __future__ import annotations

import pytest

from provision.errors import MissingPrerequisite, ProvisionError, UsageError
from provision.lifecycle.resolve import provider_for


class Holder:
    def __init__(self, name: str, stacks: set[str] | None, asked: list[str]):
        self.name, self._stacks, self._asked = name, stacks, asked

    def stored_domain(self, stack: str) -> str | None:
        self._asked.append(self.name)
        if self._stacks is None:
            raise MissingPrerequisite(f"{self.name} cannot be asked here")
        if self._stacks == {"unreachable"}:
            raise ProvisionError(f"{self.name}'s backend is out of reach")
        return "s.example.org" if stack in self._stacks else None


def maker(local: set[str] | None, hetzner: set[str] | None, asked: list[str]):
    return lambda name: Holder(name, {"local": local, "hetzner": hetzner}[name], asked)


@pytest.mark.parametrize(
    ("local", "hetzner", "explicit", "configured", "expected"),
    [
        ({"s"}, set(), None, None, "local"),  # made with --provider local: found without it
        (set(), {"s"}, None, None, "hetzner"),
        ({"s"}, None, None, None, "local"),  # no Pulumi CLI: the local stack is still found
        ({"s"}, {"unreachable"}, None, None, "local"),  # a backend out of reach does not hide it either
        (set(), None, None, None, "hetzner"),  # nowhere to be found: hetzner says why in one line
        (set(), set(), None, "local", "local"),  # nowhere: fedi.toml's provider says it is not there
        ({"s"}, {"s"}, None, "hetzner", "hetzner"),  # in both: fedi.toml's provider decides
        ({"s"}, {"s"}, "local", None, "local"),  # --provider always wins
    ],
)
def test_the_provider_that_holds_the_stack(local, hetzner, explicit, configured, expected):
    asked: list[str] = []
    assert provider_for(lambda _prov: "s", explicit, configured, maker(local, hetzner, asked)).name == expected
    if explicit:
        assert asked == []  # --provider: nobody else is asked


def test_a_stack_in_two_providers_is_a_clear_error():
    with pytest.raises(UsageError) as err:
        provider_for(lambda _prov: "s", None, None, maker({"s"}, {"s"}, []))
    assert err.value.line() == "stack: 's' exists in local and hetzner (pass --provider local or --provider hetzner)"


def test_an_unknown_provider_name_is_refused():
    with pytest.raises(UsageError, match="provider: 'aws' is not one of hetzner, local"):
        provider_for(lambda _prov: "s", "aws", None, maker(set(), set(), []))
