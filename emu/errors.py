"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class EmuError(Exception):
    """An error with a message meant for the user (what, where, what to do)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a topology file."""

    path: str  # YAML path, e.g. "pods[2].containers[0].ports[0].containerPort"
    message: str
    line: int | None = None
    column: int | None = None

    def render(self, source: str) -> str:
        where = source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        path = f" {self.path}:" if self.path else ""
        return f"{where}:{path} {self.message}"


class TopologyError(EmuError):
    """The topology file is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [p.render(source) for p in problems]
        count = len(problems)
        header = f"{source}: {count} problem{'s' if count != 1 else ''} found; nothing was changed."
        super().__init__("\n".join([header, *("  " + line for line in lines)]))
