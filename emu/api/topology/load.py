"""Load a topology file: YAML -> Topology, with every problem located by line.

Nothing here has a side effect; a file that fails to load changes nothing.

Input is read with limits, so a hostile or broken file gets a TopologyError,
never a traceback, a long wait or unbounded memory: files of at most
MAX_FILE_BYTES of UTF-8; a document of at most MAX_NODES YAML nodes counted as
its aliases expand (the "billion laughs" shape is refused from the parser's
events, before anything is composed or built), nested at most MAX_DEPTH deep,
with no alias inside the node it names. libyaml parses when PyYAML has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from emu.errors import Problem, TopologyError
from emu.api.topology.model import Host, Inventory, Topology

Path_ = tuple[str | int, ...]

MAX_FILE_BYTES = 8 << 20  # a 5,000-pod topology written out pod by pod is about 1.5 MiB
MAX_NODES = 250_000  # YAML nodes, aliases expanded; 5,000 pods written out one by one are 121,000
MAX_DEPTH = 64  # nesting; a topology needs about 8
MAX_PROBLEMS = 100  # listed; the rest are counted


def format_path(path: Path_) -> str:
    """('pods', 2, 'name') -> 'pods[2].name'."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


class Locator:
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
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a mapping or list as a key: the constructor refuses it
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


def _data_path(loc: tuple, locator: Locator) -> Path_:
    """Pydantic's error location without its union-branch markers such as
    'list[str]' (a key written in the file with brackets stays)."""
    path: Path_ = ()
    for part in loc:
        if isinstance(part, str) and any(c in part for c in "[]()") and path + (part,) not in locator.marks:
            continue
        path += (part,)
    return path


def problems_from_pydantic(error: ValidationError, locator: Locator) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        path = _data_path(item["loc"], locator)
        kind = item["type"]
        if not path and kind in ("extra_forbidden", "missing"):
            path = ("?",)  # not expected: pydantic names the key
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
        elif kind in ("greater_than_equal", "less_than_equal") and path and "nodeport" in str(path[-1]).lower():
            message = f"node port {item['input']!r} is out of range: node ports are 30000-32767; pick one there"
        elif kind in ("greater_than_equal", "less_than_equal") and path and "port" in str(path[-1]).lower():
            message = f"port {item['input']!r} is out of range: a port is 1-65535"
        else:
            message = f"{item['msg']} (got {_short(item['input'])})"
        problems.append(locator.problem(path, message))
    return problems


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) or len(value) < 100 else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _LimitError(yaml.MarkedYAMLError):
    """The document is over one of the limits; `problem` says which and what to do."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's parser where PyYAML has it: 10x faster), whose
    constructor reports values Python cannot hold as YAML errors at their line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as error:  # a date like 2024-02-30, an int of 5,000 digits
            value = node.value if isinstance(node, yaml.ScalarNode) else ""
            reason = str(error).split(";")[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {_short(value, 40)}: {reason}", node.start_mark
            ) from None


_LIBYAML = _Loader.__mro__[1] is not yaml.SafeLoader


def _check_limits(text: str) -> None:
    """Walk the parser's events (nothing is built) and raise _LimitError past
    MAX_NODES nodes, aliases expanded, or MAX_DEPTH levels, or for an alias inside
    the node it names. Composing shares an aliased node instead of copying it, but
    everything after (locating lines, building, validating) walks the document
    as a tree: a few lines of aliases ("billion laughs") would expand to billions
    of nodes. This pass costs about 1 us per event."""
    parser = _Loader(text)
    sizes: dict[str, int] = {}  # anchor -> nodes in it, aliases expanded
    open_: list[tuple[str | None, int]] = []  # (anchor, count before) of each open collection
    total = 0
    scalar, alias = yaml.ScalarEvent, yaml.AliasEvent
    start, end = (yaml.SequenceStartEvent, yaml.MappingStartEvent), (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    try:
        while True:
            event = parser.get_event()
            if isinstance(event, scalar):
                total += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, start):
                if len(open_) >= MAX_DEPTH:
                    raise _LimitError(
                        None, None,
                        f"nested more than {MAX_DEPTH} deep; a topology needs far fewer levels "
                        "(is a bracket left open?)",
                        event.start_mark,
                    )  # fmt: skip
                open_.append((event.anchor, total))
                total += 1
            elif isinstance(event, end):
                anchor, before = open_.pop()
                if anchor is not None:
                    sizes[anchor] = total - before
            elif isinstance(event, alias):
                size = sizes.get(event.anchor)
                if size is None and any(anchor == event.anchor for anchor, _ in open_):
                    raise _LimitError(
                        None, None,
                        f"the alias '*{event.anchor}' is inside the node '&{event.anchor}' it names, "
                        "which makes the document infinite; refer to a node outside it",
                        event.start_mark,
                    )  # fmt: skip
                total += size or 1  # an undefined alias is the composer's error
            elif event is None or isinstance(event, yaml.StreamEndEvent):
                return  # (None: past the end; a parser whose event classes are not these, after a re-import)
            if total > MAX_NODES:
                raise _LimitError(
                    None, None,
                    f"the document has more than {MAX_NODES:,} YAML nodes once its aliases are expanded; "
                    "write a smaller topology (deployments with replicas instead of pod lists), "
                    "and use aliases only to share small parts",
                    event.start_mark,
                )  # fmt: skip
    finally:
        parser.dispose()


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at index."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _load_yaml(text: str, source: str) -> tuple[Locator, Any]:
    """YAML text -> (locator, data), within the limits above."""
    return _load_stream(text, source, single=True)[0]


def load_documents(text: str, source: str) -> list[tuple[Locator, Any]]:
    """Every document of a YAML stream (`---` between them, as Kubernetes manifests
    are written): (locator, data) each, within the same limits as a topology
    (counted over the whole stream). Raises TopologyError."""
    return _load_stream(text, source, single=False)


def _load_stream(text: str, source: str, single: bool) -> list[tuple[Locator, Any]]:
    if len(text) > MAX_FILE_BYTES:
        raise TopologyError(source, [Problem("", f"the text is {len(text) / 2**20:.1f} MiB; {_TOO_BIG}")])
    loader = None
    documents: list[tuple[Locator, Any]] = []
    try:
        _check_limits(text)
        loader = _Loader(text)
        if single:
            roots = [loader.get_single_node()]
        else:
            roots = []
            while loader.check_node():
                roots.append(loader.get_node())
        for root in roots:
            locator = Locator(root)  # before constructing: merge keys (<<) rewrite the nodes
            documents.append((locator, loader.construct_document(root) if root is not None else None))
    except yaml.reader.ReaderError as error:
        index = error.position
        if _LIBYAML:  # libyaml counts UTF-8 bytes, Python's reader characters
            index = len(text.encode("utf-8")[: error.position].decode("utf-8", "replace"))
        line, column = _line_column(text, index)
        what = f"#x{error.character:04x}" if isinstance(error.character, int) else repr(error.character)
        raise TopologyError(
            source, [Problem("", f"not valid YAML: the character {what} is not allowed; remove it", line, column)]
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        reason = getattr(error, "problem", None) or str(error)
        prefix = "" if isinstance(error, _LimitError) else "not valid YAML: "
        raise TopologyError(source, [Problem("", f"{prefix}{reason}", line, column)]) from None
    except UnicodeEncodeError as error:  # a lone surrogate: only from a str, never from a file
        line, column = _line_column(text, error.start)
        problem = Problem("", "not valid YAML: a character is not valid Unicode", line, column)
        raise TopologyError(source, [problem]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


_TOO_BIG = (
    f"a topology is at most {MAX_FILE_BYTES >> 20} MiB; "
    "write a smaller one (deployments with replicas instead of pod lists)"
)


def _parse(text: str, source: str, model: type, what: str) -> tuple[Any, Locator, list[Problem]]:
    """YAML text -> (validated model, locator, problems so far). Raises TopologyError
    for YAML and schema problems."""
    locator, data = _load_yaml(text, source)
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
        problems += problems_from_pydantic(error, locator)
        raise TopologyError(source, _capped(problems)) from None
    return parsed, locator, problems


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    return problems[:MAX_PROBLEMS] + [Problem("", f"... and {rest:,} more problems; fix the ones above first")]


def load_text(text: str, source: str = "<topology>") -> Topology:
    """Parse and validate topology YAML. Raises TopologyError listing every problem."""
    from emu.api.topology.validate import check_topology

    topology, locator, problems = _parse(text, source, Topology, "nodes")
    problems += [locator.problem(path, message) for path, message in check_topology(topology)]
    if problems:
        raise TopologyError(source, _capped(problems))
    return topology


def read_text_file(path: Path) -> str:
    """The file's text: at most MAX_FILE_BYTES of UTF-8 (a byte order mark is allowed)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise TopologyError(str(path), [Problem("", f"cannot read the file: {error.strerror}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise TopologyError(str(path), [Problem("", f"the file is over {MAX_FILE_BYTES >> 20} MiB; {_TOO_BIG}")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[data.rfind(b"\n", 0, error.start) + 1 : error.start].decode("utf-8", "replace")) + 1
        raise TopologyError(
            str(path),
            [Problem("", f"not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8", line, column)],
        ) from None


def read_topology_file(path: str | Path) -> Topology:
    """Read and validate a topology file on its own; emu.api.load.load_file adds
    the objects of the manifests it names."""
    path = Path(path)
    return load_text(read_text_file(path), str(path))


def load_inventory(path: str | Path) -> list[Host]:
    """Read and validate a hosts inventory file (a `hosts:` list, as in a topology)."""
    path = Path(path)
    inventory, _, problems = _parse(read_text_file(path), str(path), Inventory, "hosts")
    if problems:
        raise TopologyError(str(path), problems)
    if inventory.jump:
        return [h if h.jump else h.model_copy(update={"jump": inventory.jump}) for h in inventory.hosts]
    return list(inventory.hosts)


def with_hosts(topology: Topology, hosts: list[Host], source: str) -> Topology:
    """The topology spread over `hosts` (an inventory given beside it), validated again."""
    from emu.api.topology.validate import check_topology

    merged = topology.model_copy(update={"hosts": hosts})
    problems = [Problem(format_path(path), message) for path, message in check_topology(merged)]
    if problems:
        raise TopologyError(source, problems)
    return merged


def with_runtime(topology: Topology, runtime: str, source: str) -> Topology:
    """The topology with its nodes run by `runtime` (`emu up --runtime`), validated again."""
    from emu.api.topology.validate import check_topology

    merged = topology.model_copy(update={"runtime": runtime})
    problems = [Problem(format_path(path), message) for path, message in check_topology(merged)]
    if problems:
        raise TopologyError(source, problems)
    return merged
