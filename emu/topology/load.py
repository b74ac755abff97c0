"""Load a topology file: YAML -> Topology, with every problem located by line.

Nothing here has a side effect; a file that fails to load changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from emu.errors import Problem, TopologyError
from emu.topology.model import Host, Inventory, Topology

Path_ = tuple[str | int, ...]


def format_path(path: Path_) -> str:
    """('pods', 2, 'name') -> 'pods[2].name'."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


class _Locator:
    """Maps YAML paths to the line and column where they are written."""

    def __init__(self, root: yaml.Node | None):
        self.marks: dict[Path_, yaml.Mark] = {}
        self.key_marks: dict[Path_, yaml.Mark] = {}
        self.duplicates: list[tuple[Path_, yaml.Mark]] = []
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.marks[path] = node.start_mark
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    self.duplicates.append((path + (key,), key_node.start_mark))
                seen.add(key)
                self.key_marks[path + (key,)] = key_node.start_mark
                self._walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, path + (index,))

    def locate(self, path: Path_) -> tuple[int | None, int | None]:
        """Line and column (1-based) of the longest prefix of path written in the file."""
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            mark = self.key_marks.get(prefix) or self.marks.get(prefix)
            if mark is not None:
                return mark.line + 1, mark.column + 1
        return None, None

    def problem(self, path: Path_, message: str) -> Problem:
        line, column = self.locate(path)
        return Problem(format_path(path), message, line, column)


def _allowed_keys(path: Path_) -> list[str]:
    """The keys the model accepts at the mapping that holds path[-1]."""
    model: Any = Topology
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        model = _inner_model(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(f.alias or n for n, f in model.model_fields.items())
    return []


def _inner_model(annotation: Any) -> Any:
    """Unwrap list[X], X | None and Annotated[X, ...] down to a model class."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _problems_from_pydantic(error: ValidationError, locator: _Locator) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        # Drop pydantic's union-branch markers such as 'list[str]' from the path.
        path = tuple(p for p in item["loc"] if isinstance(p, int) or not any(c in p for c in "[]()"))
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(path)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            message = f"unknown key '{path[-1]}'{hint}. Check its spelling and indentation."
        elif kind == "missing":
            message = f"'{path[-1]}' is required here"
        elif kind == "literal_error":
            message = f"{item['msg'].replace('Input should be', 'must be')} (got {item['input']!r})"
        elif kind == "value_error":
            message = item["msg"].removeprefix("Value error, ")
        elif kind in ("greater_than_equal", "less_than_equal") and path and "port" in str(path[-1]).lower():
            message = f"port {item['input']!r} is out of range: a port is 1-65535"
        else:
            message = f"{item['msg']} (got {item['input']!r})"
        problems.append(locator.problem(path, message))
    return problems


def _parse(text: str, source: str, model: type, what: str) -> tuple[Any, _Locator, list[Problem]]:
    """YAML text -> (validated model, locator, problems so far). Raises TopologyError
    for YAML and schema problems."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        reason = getattr(error, "problem", None) or str(error)
        raise TopologyError(source, [Problem("", f"not valid YAML: {reason}", line, column)]) from None
    locator = _Locator(root)
    problems = [
        locator.problem(path, f"key '{path[-1]}' is given twice; keep one") for path, _ in locator.duplicates
    ]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopologyError(source, [Problem("", f"the file must be a mapping with at least '{what}:'", 1, 1)])
    try:
        parsed = model.model_validate(data)
    except ValidationError as error:
        problems += _problems_from_pydantic(error, locator)
        raise TopologyError(source, problems) from None
    return parsed, locator, problems


def load_text(text: str, source: str = "<topology>") -> Topology:
    """Parse and validate topology YAML. Raises TopologyError listing every problem."""
    from emu.topology.validate import check_topology

    topology, locator, problems = _parse(text, source, Topology, "nodes")
    problems += [locator.problem(path, message) for path, message in check_topology(topology)]
    if problems:
        raise TopologyError(source, problems)
    return topology


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise TopologyError(str(path), [Problem("", f"cannot read the file: {error.strerror}")]) from None


def load_file(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    return load_text(_read(path), str(path))


def load_inventory(path: str | Path) -> list[Host]:
    """Read and validate a hosts inventory file (a `hosts:` list, as in a topology)."""
    path = Path(path)
    inventory, _, problems = _parse(_read(path), str(path), Inventory, "hosts")
    if problems:
        raise TopologyError(str(path), problems)
    return list(inventory.hosts)


def with_hosts(topology: Topology, hosts: list[Host], source: str) -> Topology:
    """The topology spread over `hosts` (an inventory given beside it), validated again."""
    from emu.topology.validate import check_topology

    merged = topology.model_copy(update={"hosts": hosts})
    problems = [Problem(format_path(path), message) for path, message in check_topology(merged)]
    if problems:
        raise TopologyError(source, problems)
    return merged
