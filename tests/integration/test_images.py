"""The controller image: emu in a container finds and reads a running cluster."""

from __future__ import annotations

import json

from emu.control.runtime.images import ImageBuilder


def test_controller_image_sees_the_running_cluster(runtime, lab):
    tag = ImageBuilder(runtime).ensure_controller_image()
    api = runtime.api
    container = api.create_container(
        tag,
        command=["status", "--json", "--name", lab.name],
        labels={"io.emu.cluster": lab.name, "io.emu.role": "external"},
        host_config=api.create_host_config(binds=["/var/run/docker.sock:/var/run/docker.sock"]),
    )
    try:
        api.start(container["Id"])
        assert api.wait(container["Id"], timeout=120)["StatusCode"] == 0, api.logs(container["Id"]).decode()
        data = json.loads(api.logs(container["Id"], stderr=False).decode())
    finally:
        api.remove_container(container["Id"], force=True)
    state = lab.state()
    assert {p["name"]: p["podIP"] for p in data["pods"]} == {p.name: p.ip for p in state.pods.values()}
