"""Random and mutated topologies: each loads or gives a TopologyError, never
another exception (a traceback for the user).

Mutations of topologies/default.yaml, structural (a key dropped, a value of
another type, an entry duplicated) and textual (lines dropped, duplicated or
re-indented, characters replaced, random bytes, truncation), with a fixed seed
so a failure is reproduced by running the test again.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml

from emu.errors import TopologyError
from emu.api.topology.load import load_text
from emu.api.topology.model import Topology

DEFAULT = (Path(__file__).parents[2] / "topologies" / "default.yaml").read_text()
SEED = 13
CASES = 400

ODD_VALUES = [
    None, True, False, 0, -1, 1, 65536, 2**64, 1.5, float("inf"), "", "x", "None", "default",
    "10.0.0.0/8", "10.244.0.0/33", "300.1.1.1", "a" * 300, "UPPER_case", "-", "worker",
    [], [1], ["x"], [{}], [None], {}, {"x": 1}, {"name": "a"}, {"app": "web"},
]  # fmt: skip


def _paths(data, path=()):
    """Every (container, key) in a YAML document."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield data, key
            yield from _paths(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield data, index
            yield from _paths(value, path + (index,))


def _structural(generator: random.Random) -> str:
    data = copy.deepcopy(yaml.safe_load(DEFAULT))
    for _ in range(generator.randrange(1, 4)):
        places = list(_paths(data))
        container, key = generator.choice(places)
        kind = generator.random()
        if kind < 0.3:
            del container[key]  # drop a key or an entry
        elif kind < 0.7:
            container[key] = copy.deepcopy(generator.choice(ODD_VALUES))  # another type
        elif isinstance(container, list):
            container.append(copy.deepcopy(container[key]))  # duplicate an entry
        else:
            container[key] = [container[key], copy.deepcopy(container[key])]
    return yaml.safe_dump(data, sort_keys=False)


def _textual(generator: random.Random) -> str:
    lines = DEFAULT.splitlines(keepends=True)
    kind = generator.random()
    if kind < 0.2:  # truncated
        return DEFAULT[: generator.randrange(len(DEFAULT))]
    if kind < 0.4:  # lines dropped, duplicated (a duplicate key) or re-indented
        for _ in range(generator.randrange(1, 5)):
            index = generator.randrange(len(lines))
            action = generator.randrange(3)
            if action == 0:
                del lines[index]
            elif action == 1:
                lines.insert(index, lines[index])
            else:
                lines[index] = " " * generator.randrange(0, 5) + lines[index].lstrip(" ")
        return "".join(lines)
    if kind < 0.7:  # characters replaced by YAML's own punctuation or anything
        text = list(DEFAULT)
        for _ in range(generator.randrange(1, 8)):
            text[generator.randrange(len(text))] = generator.choice(
                [*":-[]{}&*!|>'\"#%@`,?\n\t ", chr(generator.randrange(0x20, 0x3000)), chr(generator.randrange(32))]
            )
        return "".join(text)
    if kind < 0.85:  # random bytes, read as a file would be if they happen to be UTF-8
        data = bytes(generator.randrange(256) for _ in range(generator.randrange(200)))
        return data.decode("utf-8", "replace")
    # random YAML-ish text
    return "".join(generator.choice(["a", ":", " ", "\n", "-", "[", "]", "{", "}", "&a", "*a", "1", ",", "<<"])
                   for _ in range(generator.randrange(100)))  # fmt: skip


def cases() -> list[str]:
    generator = random.Random(SEED)
    return [(_structural if generator.random() < 0.5 else _textual)(generator) for _ in range(CASES)]


def test_the_default_topology_loads():
    assert isinstance(load_text(DEFAULT), Topology)


def test_mutated_topologies_load_or_give_a_topology_error():
    crashes = []
    outcomes = {"loaded": 0, "refused": 0}
    for index, text in enumerate(cases()):
        try:
            load_text(text, f"case-{index}")
            outcomes["loaded"] += 1
        except TopologyError as error:
            assert str(error).startswith(f"case-{index}: ")
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - what this test looks for
            crashes.append((index, f"{type(error).__name__}: {error}", text))
    if crashes:
        index, error, text = crashes[0]
        pytest.fail(f"{len(crashes)} of {CASES} cases crashed; the first, case {index}: {error}\n{text}")
    assert outcomes["loaded"] and outcomes["refused"]  # the mutations reach both outcomes


def test_a_service_subnet_at_the_top_of_the_address_space():
    text = DEFAULT.replace("serviceSubnet: 10.96.0.0/16", "serviceSubnet: 255.255.255.255/32")
    with pytest.raises(TopologyError, match="serviceSubnet 255.255.255.255/32 is too small"):
        load_text(text)
