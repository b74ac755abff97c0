"""The uml provider's pieces that run anywhere: the command server's stream
answer read by UmlStream (a real server and real processes on this host), the
node's resolv.conf, and the topology's runtime field. Real guests:
tests/integration/test_uml_runtime.py."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emu.api.topology.load import TopologyError, load_text, with_runtime
from emu.control.runtime import umlguest
from emu.control.runtime.umlprovider import UmlStream, bridge_name, external_address, resolv_conf


@pytest.fixture
def server(monkeypatch):
    """The guest's command server, on this host's loopback."""
    running = umlguest.Server(("127.0.0.1", 0), umlguest.Handler)
    running.boot_id = "b00t"
    monkeypatch.setattr(umlguest, "PORT", running.server_address[1])
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield SimpleNamespace(ip="127.0.0.1", boot_id="b00t")
    running.shutdown()
    running.server_close()


def test_a_stream_gives_output_as_it_comes_then_its_errors_and_exit_code(server):
    handle = UmlStream(None, "node", server, ["sh", "-c", "echo one; echo oops >&2; sleep 0.3; echo two; exit 3"])
    handle._sock.settimeout(20)  # a server that never ends the answer fails the test, not hangs it
    first = handle.read()
    assert first == b"one\n" and handle.exit_code() is None  # before the command ended
    rest = b""
    while chunk := handle.read():
        rest += chunk
    assert rest == b"two\n" and handle.errors() == "oops\n" and handle.exit_code() == 3


def test_a_stream_whose_reader_goes_away_ends_its_command(server, tmp_path):
    pid_file = tmp_path / "pid"
    handle = UmlStream(None, "node", server, ["sh", "-c", f'echo $$ >{pid_file}; echo up; exec sleep 60'])
    assert handle.read() == b"up\n"
    pid = int(pid_file.read_text())
    handle._sock.close()  # as a killed emu's connection
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_a_stream_to_another_guest_is_refused(server):
    handle = UmlStream(None, "node", SimpleNamespace(ip="127.0.0.1", boot_id="other"), ["true"])
    assert handle.read() == b"" and "another guest" in handle.errors() and handle.exit_code() is None


def test_a_nodes_resolv_conf_drops_loopback_nameservers(tmp_path):
    host = tmp_path / "resolv.conf"
    host.write_text("# comment\nnameserver 127.0.0.53\nsearch example.com\n")
    assert resolv_conf(host) == "search example.com\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    host.write_text("nameserver 10.0.0.2\n")
    assert resolv_conf(host) == "nameserver 10.0.0.2\n"


def test_an_external_host_takes_a_free_address_below_the_load_balancer_pool():
    subnet = ipaddress.IPv4Network("172.28.3.0/24")  # pool: .223-.254
    assert external_address(subnet, {"172.28.3.1", "172.28.3.2"}) == "172.28.3.222"
    assert external_address(subnet, {"172.28.3.222", "172.28.3.221"}) == "172.28.3.220"
    small = ipaddress.IPv4Network("10.9.0.0/26")  # pool .31-.62; below it .30 down to .1
    assert external_address(small, {f"10.9.0.{i}" for i in range(1, 31)}) is None


def test_bridge_names_fit_the_kernels_limit():
    assert len(bridge_name("a-very-long-cluster-name-indeed")) <= 15 and bridge_name("a") != bridge_name("b")


LAB = "name: lab\nnodes: [{name: n1}]\npods: [{name: p, containers: [{name: c, image: nginx}]}]\n"


def test_runtime_uml_refuses_image_containers_and_hosts_before_anything():
    with pytest.raises(TopologyError, match="pods\\[0\\].containers\\[0\\].image.*needs the docker runtime"):
        load_text("runtime: uml\n" + LAB)
    with pytest.raises(TopologyError, match="needs the docker runtime"):
        with_runtime(load_text(LAB), "uml", "lab.yaml")  # emu up --runtime uml
    hosts = "hosts: [{name: h1, address: 10.0.0.1}]\n"
    with pytest.raises(TopologyError, match="runtime uml runs every node on this machine"):
        load_text("runtime: uml\n" + hosts + "name: lab\nnodes: [{name: n1}]\n")
    with pytest.raises(TopologyError, match="runtime"):
        load_text("runtime: podman\nname: lab\nnodes: [{name: n1}]\n")
    assert load_text("runtime: uml\nname: lab\nnodes: [{name: n1}]\n").runtime == "uml"
