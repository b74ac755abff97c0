"""The provider seam (emu.control.runtime.provider): four small interfaces, and
every runtime implements each of them with the same parameters, so code written
against the seam runs on docker, swarm, uml and the fake engine alike."""

import inspect

import pytest

from emu.control.runtime.docker import DockerRuntime
from emu.control.runtime.provider import Clusters, NodeExec, Provider, Provisioning, Sandboxes
from emu.control.runtime.swarm import SwarmRuntime
from emu.control.runtime.umlprovider import UmlRuntime
from emu.testing.fakeprovider import FakeProvider

INTERFACES = [Clusters, Provisioning, NodeExec, Sandboxes]
RUNTIMES = [DockerRuntime, SwarmRuntime, UmlRuntime, FakeProvider]


def methods(interface) -> dict:
    return {name: value for name, value in vars(interface).items()
            if inspect.isfunction(value) and not name.startswith("_")}  # fmt: skip


def test_each_interface_is_small_and_provider_is_their_sum():
    for interface in INTERFACES:
        assert len(methods(interface)) <= 10, f"{interface.__name__} has {len(methods(interface))} methods"
    names = [name for interface in INTERFACES for name in methods(interface)]
    assert len(names) == len(set(names)), "a method in two interfaces"
    assert not methods(Provider), "Provider adds nothing of its own"


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda runtime: runtime.__name__)
@pytest.mark.parametrize("interface", INTERFACES, ids=lambda interface: interface.__name__)
def test_every_runtime_implements_every_method_with_its_parameters(runtime, interface):
    for name, declared in methods(interface).items():
        implemented = getattr(runtime, name, None)
        assert callable(implemented), f"{runtime.__name__} lacks {interface.__name__}.{name}"
        want = list(inspect.signature(declared).parameters)
        have = list(inspect.signature(implemented).parameters)
        assert have[: len(want)] == want, f"{runtime.__name__}.{name}{tuple(have)}: the seam says {tuple(want)}"
