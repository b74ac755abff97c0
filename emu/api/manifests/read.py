"""Read manifests: files, directories (their .yaml, .yml and .json files, as
`kubectl apply -f DIR`) or standard input, each a stream of YAML documents,
with the same limits as a topology file (emu.api.topology.load)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import EmuError, Problem, TopologyError
from emu.api.manifests.convert import ManifestObject, convert
from emu.api.topology.load import MAX_FILE_BYTES, load_documents, read_text_file

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(TopologyError):
    """Manifests with problems: every one, each with its file, line and field."""

    def __init__(self, problems: list[tuple[str, Problem]]):
        self.problems = [problem for _, problem in problems]
        self.source = problems[0][0] if problems else ""
        count = len(problems)
        lines = [problem.render(source) for source, problem in problems]
        header = f"{count} problem{'s' if count != 1 else ''} found in the manifests; nothing was changed."
        EmuError.__init__(self, "\n".join([header, *("  " + line for line in lines)]))


@dataclass
class Manifests:
    """The objects of some manifests, in the order they were written."""

    objects: list[ManifestObject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def manifest_files(path: str) -> list[Path]:
    """The files a -f argument names: the file itself, or a directory's manifests."""
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise EmuError(f"directory '{path}' has no manifests (files ending in {', '.join(SUFFIXES)})")
        return files
    if not target.exists():
        raise EmuError(f"manifest '{path}' does not exist; pass a YAML file, a directory of them, or - for stdin")
    return [target]


def read_manifests(paths: list[str], namespace: str = "default", stdin=None) -> Manifests:
    """Read every object of the manifests at `paths` ("-": standard input).
    Raises ManifestError listing every problem; warnings are returned."""
    result = Manifests()
    problems: list[tuple[str, Problem]] = []
    for path in paths:
        if path == "-":
            text = (stdin or sys.stdin).read(MAX_FILE_BYTES + 1)
            texts = [("<stdin>", text)]
        else:
            texts = [(str(file), read_text_file(file)) for file in manifest_files(path)]
        for source, text in texts:
            result.sources.append(source)
            try:
                documents = load_documents(text, source)
            except TopologyError as error:
                problems += [(source, problem) for problem in error.problems]
                continue
            for number, (locator, data) in enumerate(documents, 1):
                if data is None:
                    continue  # an empty document, as kubectl skips it
                if not isinstance(data, dict):
                    problems.append((source, locator.problem((), f"document {number} is not a mapping (a Kubernetes object)")))
                    continue
                items = [((), data)]
                if data.get("kind") == "List" and data.get("apiVersion") == "v1":
                    listed = data.get("items") or []
                    items = [(("items", i), item) for i, item in enumerate(listed) if isinstance(item, dict)]
                for prefix, item in items:
                    obj, found, warnings = convert(item, locator, source, number, namespace, prefix)
                    problems += [(source, problem) for problem in found]
                    result.warnings += warnings
                    if obj is not None:
                        result.objects.append(obj)
    if problems:
        raise ManifestError(problems)
    return result
