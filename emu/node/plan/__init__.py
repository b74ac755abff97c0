"""Per-node plans: pure functions from cluster state to text.

A NodePlan is a set of files and one shell script that uses them; the runtime
copies the files into the node and runs the script in a single docker exec.
Same state in, byte-identical plan out.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodePlan:
    node: str
    container: str
    files: dict[str, str | bytes] = field(default_factory=dict)  # path inside the node -> content (bytes: bytecode)
    steps: list[str] = field(default_factory=list)  # shell lines, run in order with `set -eu`

    @property
    def empty(self) -> bool:
        return not self.steps

    @property
    def script(self) -> str:
        return "\n".join(["#!/bin/sh", f"# emu plan for node {self.node}", "set -eu", *self.steps, ""])

    def render(self, show_files: bool = True) -> str:
        """Human-readable plan: each file, then the script (what `emu plan` prints)."""
        out = [f"### node {self.node} (container {self.container})"]
        if show_files:
            for path in sorted(self.files):
                if path.startswith("/opt/emu/"):
                    if "/__pycache__/" not in path:  # (its compiled modules are not listed)
                        out.append(f"--- {path} (emu's own program, not shown)")
                    continue
                out.append(f"--- {path}")
                out.append(self.files[path].rstrip("\n"))
        out.append("--- script")
        out.append(self.script.rstrip("\n"))
        return "\n".join(out) + "\n"
