"""Which of the engine's errors on a removal mean "done" (emu.control.runtime.docker.already_removed)."""

from __future__ import annotations

import docker.errors
import requests

from emu.control.runtime import docker as docker_runtime
from emu.control.runtime.docker import DockerRuntime, already_removed, kill_pending


def error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.models.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(f"{status} Client Error", response=response, explanation=explanation)


def test_a_removal_in_progress_or_a_missing_object_is_done():
    assert already_removed(error(409, "removal of container 4f1 is already in progress"))
    assert already_removed(error(404, "No such container: 4f1"))
    assert already_removed(error(404, "network emu-x not found"))
    assert already_removed(error(500, "Error: No such container: 4f1"))  # older engines


def test_other_conflicts_and_failures_are_not():
    assert not already_removed(error(409, "You cannot remove a running container 4f1. Stop the container first"))
    assert not already_removed(error(500, "driver overlay2 failed to remove root filesystem: device or resource busy"))
    assert not already_removed(error(403, "error while removing network: network emu-x id 12 has active endpoints"))


def test_a_kill_whose_exit_event_came_late_is_asked_again(monkeypatch):
    """dockerd's 500 under load (the CI run of 2026-12-07 lost two teardowns to it)."""
    late = error(500, "Could not kill running container 5401bc, cannot remove - tried to kill container, "
                      "but did not receive an exit event")  # fmt: skip
    assert kill_pending(late) and not already_removed(late)
    assert not kill_pending(error(500, "driver overlay2 failed to remove root filesystem"))

    class Engine:
        """The two calls remove_containers makes; the first removal meets the late exit event."""

        def __init__(self):
            self.removals = 0

        def containers(self, all, filters):
            return [{"Id": "5401bc"}]

        def remove_container(self, container, force, v):
            self.removals += 1
            if self.removals == 1:
                raise late

    monkeypatch.setattr(docker_runtime.time, "sleep", lambda seconds: None)
    runtime = DockerRuntime()
    runtime._api = engine = Engine()
    assert runtime.remove_containers("lab") == 1 and engine.removals == 2
