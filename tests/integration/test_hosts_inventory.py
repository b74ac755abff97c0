"""Several hosts as users meet them (issue 27): an inventory that names one engine twice is refused before
anything changes, a prepare that fails leaves every engine as it found it, and removals that race each other
count as done. The hosts are the lab's (tests/hostlab.py): real dockerds with their own sshd."""

from __future__ import annotations

import threading
import time

import docker
import pytest

from emu.control.runtime.docker import DockerRuntime

MANY_FILES = 50000  # a container whose removal takes about a second here: time for a second remover to meet it


def test_a_removal_already_in_progress_counts_as_done(runtime, new_name):
    """Two removers of one cluster at once (two `emu down`s, or one engine under two names): the second meets
    Docker's 409 "removal ... is already in progress" and must count the container as removed."""
    cluster = new_name("race")
    api = runtime.api
    fill = f"mkdir /d && cd /d && seq 1 {MANY_FILES} | xargs touch && touch /filled && sleep infinity"
    image = runtime.node_image(lambda message: None)
    container = api.create_container(image, ["sh", "-c", fill], name=f"{cluster}-big",
                                     labels={"io.emu.cluster": cluster})["Id"]
    try:
        api.start(container)
        while api.exec_start(api.exec_create(container, ["sh", "-c", "test -f /filled && echo yes"])).strip() != b"yes":
            time.sleep(0.2)
        first = threading.Thread(target=lambda: api.remove_container(container, force=True, v=True))
        first.start()
        while api.inspect_container(container)["State"]["Status"] != "removing":
            time.sleep(0.02)
        assert DockerRuntime().remove_containers(cluster) == 1  # no APIError 409
        first.join()
        with pytest.raises(docker.errors.NotFound):
            api.inspect_container(container)
    finally:
        try:
            api.remove_container(container, force=True, v=True)
        except docker.errors.APIError:
            pass
