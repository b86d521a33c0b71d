"""Reading ansible-playbook's default output as it streams: progress lines, the failed task, the recap.

Pure: lines in, facts out. The progress lines carry only a status and a task name, never the rest
of a result line (item values and module output can hold secrets; they go to the 0600 log only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_HEADER = re.compile(r"^(TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**\s*$")
_PLAY = re.compile(r"^PLAY \[(?P<name>.*)\] \**\s*$")
_RESULT = re.compile(r"^(?P<status>ok|changed|skipping|fatal|failed): \[(?P<host>[^\]]+)\](?P<rest>.*)$")
_RECAP_HEADER = re.compile(r"^PLAY RECAP \**\s*$")
_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")
_ERROR = re.compile(r"^(ERROR!|\[ERROR\]:)\s*(?P<msg>.*)$")


@dataclass(frozen=True)
class Failure:
    task: str
    host: str
    message: str  # the module's msg, first line, shortened


@dataclass
class AnsibleOutput:
    """Feed it every line of the run; ask it for progress, failures and the recap."""

    task: str = ""
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "ERROR! ..." lines (syntax errors, missing files)
    _in_recap: bool = False
    _shown: set[tuple[str, str]] = field(default_factory=set)

    def feed(self, line: str) -> str | None:
        """Consume one line; return a progress line to show, or None."""
        line = line.rstrip("\r\n")
        if _RECAP_HEADER.match(line):
            self._in_recap = True
            return None
        if self._in_recap:
            m = _RECAP_LINE.match(line.strip())
            if m:
                counts = dict(pair.split("=") for pair in m["counts"].split())
                self.recap[m["host"]] = {k: int(v) for k, v in counts.items()}
            return None
        if m := _PLAY.match(line):
            return f"play: {m['name']}"
        if m := _HEADER.match(line):
            self.task = m["name"]
            return None
        if m := _ERROR.match(line):
            self.errors.append(m["msg"].strip())
            return None
        if line.strip() == "...ignoring" and self.failures:
            self.failures.pop()  # ignore_errors: the task failed, the play goes on
            return None
        m = _RESULT.match(line)
        if not m:
            return None
        status = "failed" if m["status"] in ("fatal", "failed") else m["status"]
        if status == "failed":
            self.failures.append(Failure(self.task, m["host"], _message(m["rest"])))
        if (self.task, status) in self._shown:  # loops: one line per task and status
            return None
        self._shown.add((self.task, status))
        return f"{status:8} {self.task}"

    @property
    def changed(self) -> int:
        return sum(c.get("changed", 0) for c in self.recap.values())

    @property
    def failed(self) -> int:
        return sum(c.get("failed", 0) + c.get("unreachable", 0) for c in self.recap.values())


def _message(rest: str) -> str:
    """The ``msg`` of a ``fatal: [host]: FAILED! => {...}`` line, shortened to one line."""
    _, sep, payload = rest.partition("=> ")
    msg = ""
    if sep:
        try:
            data = json.loads(payload)
        except ValueError:
            found = re.search(r'"msg":\s*"((?:[^"\\]|\\.)*)"', payload)
            msg = found[1] if found else ""
        else:
            if isinstance(data, dict):
                msg = str(data.get("msg") or data.get("stderr") or data.get("reason") or "")
    msg = " ".join(msg.split())  # one line
    return msg if len(msg) <= 300 else msg[:297] + "..."
