"""The test tree itself: pytest collects tests/unit and tests/integration as
one rootdir, so two test modules of the same name cannot both be collected."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_anywhere_under_tests_share_a_name():
    """Subfolders too (tests/unit/node/, tests/unit/apiserver/): the guard once looked at
    the top of each folder only, and two modules in tests/unit/node/ stopped a full run."""
    seen: dict[str, list[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename all but one of each: {clashes}"


# ---- the package's floor plan (docs/architecture.md) ---------------------------------------

import ast  # noqa: E402
import sys  # noqa: E402

PACKAGE = TESTS.parent / "emu"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports, at its top or inside a function, with the line:
    `from emu.x import y` counts as emu.x.y where y is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in MODULES else node.module, node.lineno))
    return found


def _emu_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_emu_module(name) for name, _ in _imports(path) if name.split(".")[0] == "emu"}
        # A module's own packages are imported with it by Python itself: not an edge.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def test_no_import_cycles_not_even_through_imports_inside_functions():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def connect(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            connect(module)
    assert not cycles, f"import cycles: {cycles}"


def _foreign_imports(prefix: str, allowed_emu: tuple[str, ...], allowed_other: set[str]) -> list[str]:
    wrong = []
    for module, path in MODULES.items():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        for name, line in _imports(path):
            top = name.split(".")[0]
            if top == "emu":
                if not (name == "emu" or name.startswith(allowed_emu)):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
            elif top not in sys.stdlib_module_names and not top.startswith("_") and top not in allowed_other:
                # ("_x": CPython's private modules, as _sha2 of a newer Python than this one)
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    return wrong


def test_what_ships_into_nodes_imports_only_itself_the_standard_library_and_dnslib():
    """emu.node runs with the node image's python3: no controller code, no PyPI package."""
    assert _foreign_imports("emu.node", ("emu.node", "emu.errors"), {"dnslib"}) == []


def test_the_api_server_imports_nothing_from_the_controller_side():
    """emu.apiserver runs in the control-plane node with Debian's python3 packages only."""
    allowed = {"cryptography", "jsonpatch", "wsproto"}  # Debian's python3-* packages in images/node
    assert _foreign_imports("emu.apiserver", ("emu.apiserver", "emu.node", "emu.errors"), allowed) == []


def test_the_layout_tests_see_every_package_and_would_see_a_cycle():
    """A guard for the guards: they read the real tree, imports inside functions included."""
    for package in ("emu.node.agent", "emu.node.proxy.iptables", "emu.control.cluster", "emu.api.topology.load"):
        assert package in MODULES
    graph = _graph()
    assert "emu.api.manifests" in graph["emu.api.load"]  # a top-level import
    assert "emu.control.runtime.swarm" in graph["emu.control.runtime.select"]  # one inside a function
