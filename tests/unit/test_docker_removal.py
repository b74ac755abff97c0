"""Which of the engine's errors on a removal mean "done" (emu.control.runtime.docker.already_removed)."""

from __future__ import annotations

import docker.errors
import requests

from emu.control.runtime.docker import already_removed


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
