"""The pods' streaming subresources end to end without Docker: the real kubectl
and the Python client against the API server (emu.apiserver.streaming), which
proxies to a node agent's streaming API (emu.node.agent.streams, served by the
agent's own web.Server on a local port). The one stand-in: the "pod" is this
host (the agent runs commands as they are instead of through `ip netns exec`,
and its log file is under tmp_path); the framing, the WebSocket protocols and
the HTTP streams are the real ones."""

from __future__ import annotations

import copy
import http.server
import json
import queue
import socket
import struct
import subprocess
import threading
import types

import pytest

from emu.apiserver import resources, streaming
from emu.node.agent import streams, web

kubernetes = pytest.importorskip("kubernetes")
pytest.importorskip("wsproto")
from kubernetes import client
from kubernetes.stream import portforward, stream


def put(server, obj: dict) -> None:
    r = resources.by_kind(obj["apiVersion"], obj["kind"])
    obj = copy.deepcopy(obj)
    status = obj.get("status")
    resources.prepare_create(r, obj)
    if status:
        obj["status"] = status  # as the node writes it
    server.store.create(r.key, obj, r.field_values)


@pytest.fixture()
def pod(apiserver, tmp_path, monkeypatch):
    """Pod default/p on node n1 (InternalIP 127.0.0.1), served by a stand-in agent; yields its log file."""
    monkeypatch.setattr(streams.cni, "in_pod_argv", lambda pod, container, argv: list(argv))
    monkeypatch.setattr(streams.cni, "LOG_DIR", str(tmp_path / "pods"))
    log = tmp_path / "pods" / "p" / "c.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"line 1\nline 2\nline 3\n")
    state = types.SimpleNamespace(pods={"default/p": types.SimpleNamespace(
        name="p", namespace="default", netns="p", containers=[{"name": "c", "workload": "netexec"}])})
    agent = web.Server(("127.0.0.1", 0), lambda request, wfile: streams.serve(request, wfile, state))
    threading.Thread(target=agent.serve_forever, daemon=True).start()
    monkeypatch.setattr(streaming, "AGENT_PORT", agent.port)
    put(apiserver.server, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                           "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}})
    put(apiserver.server, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "netexec"}]},
                           "status": {"podIP": "127.0.0.1", "phase": "Running"}})
    yield log
    agent.close()


# ---------------------------------------------------------------- framing

def test_websocket_accept_is_rfc6455s_example():
    assert streaming.websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_node_frames_round_trip_between_server_and_agent_sides():
    a, b = socket.socketpair()
    with a, b:
        streaming.write_frame(a, streaming.STDIN, b"hello")
        streaming.write_frame(a, streaming.STDIN, b"")
        a.sendall(streams.frame(streams.RESIZE, b'{"Width":80,"Height":24}'))
        a.shutdown(socket.SHUT_WR)
        rfile = b.makefile("rb")
        assert streams.read_frame(rfile) == (0, b"hello")
        assert streams.read_frame(rfile) == (0, b"")
        assert streaming.read_frame(rfile) == (4, b'{"Width":80,"Height":24}')
        assert streaming.read_frame(rfile) is None


def test_protocol_choice_follows_the_clients_order_among_those_served():
    assert streaming.choose_protocol("v5.channel.k8s.io, v4.channel.k8s.io", streaming.CHANNEL_PROTOCOLS) == \
        "v5.channel.k8s.io"
    assert streaming.choose_protocol("v4.channel.k8s.io,v3.channel.k8s.io", streaming.CHANNEL_PROTOCOLS) == \
        "v4.channel.k8s.io"
    assert streaming.choose_protocol("channel.k8s.io", streaming.CHANNEL_PROTOCOLS) is None


def test_tail_counts_a_last_line_without_newline():
    assert streams.tail(b"a\nb\nc", 2) == b"b\nc"
    assert streams.tail(b"a\nb\n", 5) == b"a\nb\n"
    assert streams.tail(b"a\n", 0) == b""


# ---------------------------------------------------------------- kubectl

def test_kubectl_exec_prints_both_streams_and_exits_with_the_commands_code(kubectl_default, pod):
    p = kubectl_default.run("exec", "p", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (p.returncode, p.stdout) == (3, "out\n")
    assert "err\n" in p.stderr


def test_kubectl_exec_with_stdin_ends_when_stdin_ends(kubectl_default, pod):
    p = kubectl_default.run("exec", "-i", "p", "--", "cat", input="hello\nworld\n")
    assert p.stdout == "hello\nworld\n"


def test_kubectl_exec_of_a_missing_container_says_so(kubectl_default, pod):
    p = kubectl_default.run("exec", "p", "-c", "nope", "--", "true", check=False)
    assert p.returncode == 1 and "does not have a container named nope" in p.stderr


def test_kubectl_logs_tail_and_follow(kubectl_default, pod):
    assert kubectl_default("logs", "p") == "line 1\nline 2\nline 3\n"
    assert kubectl_default("logs", "p", "--tail=1") == "line 3\n"
    assert "previous terminated container" in kubectl_default.run("logs", "p", "--previous", check=False).stderr
    follow = kubectl_default.popen("logs", "-f", "p", "--tail=1")
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=20) == "line 3\n"
        with pod.open("a") as handle:
            handle.write("line 4\n")
        assert lines.get(timeout=20) == "line 4\n"  # appended after kubectl started: followed
    finally:
        follow.kill()
        follow.wait()


# ---------------------------------------------------------------- the Python client

def test_python_client_exec_over_websocket(apiserver, pod):
    v1 = client.CoreV1Api(apiserver.client())
    resp = stream(v1.connect_get_namespaced_pod_exec, "p", "default", command=["sh", "-c", "read x; echo got $x; exit 2"],
                  stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
    resp.write_stdin("it\n")
    resp.run_forever(timeout=20)
    assert resp.read_stdout() == "got it\n"
    assert resp.returncode == 2


def test_python_client_exec_with_a_tty_runs_on_a_terminal(apiserver, pod):
    v1 = client.CoreV1Api(apiserver.client())
    out = stream(v1.connect_get_namespaced_pod_exec, "p", "default", command=["sh", "-c", "test -t 0 && echo tty"],
                 stdin=False, stdout=True, stderr=True, tty=True)
    assert out.strip() == "tty"


def test_python_client_portforward_reaches_the_pods_port(apiserver, pod):
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"p"
            self.send_response(200)
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    web_server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=web_server.serve_forever, daemon=True).start()
    port = web_server.server_address[1]
    try:
        v1 = client.CoreV1Api(apiserver.client())
        pf = portforward(v1.connect_get_namespaced_pod_portforward, "p", "default", ports=str(port))
        sock = pf.socket(port)
        sock.settimeout(20)
        sock.sendall(b"GET /hostname HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        sock.close()
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"\r\n\r\np")
        assert pf.error(port) is None
    finally:
        web_server.shutdown()


def test_an_exec_that_is_no_websocket_gets_a_status_saying_what_to_use(apiserver, pod):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(apiserver.base_url + "/api/v1/namespaces/default/pods/p/exec?command=true",
                                     method="POST", headers={"Connection": "Upgrade", "Upgrade": "h2c"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    status = json.loads(caught.value.read())
    assert caught.value.code == 400 and "WebSocket" in status["message"]


# ---------------------------------------------------------------- kubectl port-forward (SPDY)

def test_the_spdy_dictionary_is_the_specs():
    import zlib

    from emu.apiserver import spdy

    # a zlib stream names its dictionary by this Adler-32; client-go's compressor uses the spec's
    assert (len(spdy.DICTIONARY), zlib.adler32(spdy.DICTIONARY)) == (1423, 3821447106)


def test_spdy_header_blocks_round_trip_through_one_compression_context():
    import zlib

    from emu.apiserver import spdy

    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zdict=spdy.DICTIONARY)
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    for headers in ({"streamtype": "error", "port": "80", "requestid": "0"}, {"streamtype": "data", "port": "80"}):
        block = deflate.compress(spdy.encode_headers(headers)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        assert spdy.decode_headers(inflate.decompress(block)) == headers


@pytest.fixture()
def hello_server():
    """A local HTTP server standing in for the pod's port: /hostname answers "p"."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"p" if self.path == "/hostname" else b"x" * 300_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def kubectl_port_forward(path: str, apiserver, port: int, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Start `kubectl port-forward p :PORT`; (the process, the local port it printed)."""
    import re

    proc = subprocess.Popen([path, "port-forward", "p", f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**apiserver.env(), **(env or {})})  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=20)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"kubectl port-forward printed nothing: {proc.stderr.read()}") from None
    found = re.search(r"127\.0\.0\.1:(\d+) -> (\d+)", line)
    assert found and int(found.group(2)) == port, line
    return proc, int(found.group(1))


@pytest.mark.parametrize("binary,env", [
    ("kubectl", {}),  # 1.32: SPDY inside a WebSocket (SPDY/3.1+portforward.k8s.io)
    ("kubectl", {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}),  # 1.32 on plain SPDY/3.1
    ("kubectl.1.27", {}),  # plain SPDY/3.1 only
])
def test_kubectl_port_forward_reaches_the_pods_port(apiserver, pod, hello_server, binary, env):
    import os
    import shutil
    import urllib.request

    path = shutil.which(binary) or f"/usr/lib/google-cloud-sdk/bin/{binary}"
    if not os.path.exists(path):
        path = None
    if not path:
        pytest.skip(f"{binary} is not installed on this machine")
    proc, local = kubectl_port_forward(path, apiserver, hello_server, env)
    try:
        for _ in range(2):  # two connections: two stream pairs on one session
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/hostname", timeout=20) as answer:
                assert answer.read() == b"p"
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/big", timeout=20) as answer:
            assert len(answer.read()) == 300_000  # more than one SPDY window, in many frames
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("binary", ["/usr/bin/kubectl", "/usr/lib/google-cloud-sdk/bin/kubectl.1.29"])
def test_kubectl_exec_it_runs_on_a_terminal_of_the_callers_size(apiserver, pod, binary):
    import fcntl
    import os
    import pty
    import termios

    if not os.path.exists(binary):
        pytest.skip(f"{binary} is not installed on this machine")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = subprocess.Popen([binary, "exec", "-it", "p", "--", "sh", "-c", "stty size; exit 5"],
                            stdin=slave, stdout=slave, stderr=slave, env=apiserver.env(),
                            start_new_session=True)  # fmt: skip
    os.close(slave)
    out = b""
    try:
        assert proc.wait(timeout=30) == 5
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        proc.kill()
        os.close(master)
    assert b"33 111" in out  # kubectl's resize message reached the command's terminal


def test_kubectl_attach_shows_the_containers_output_from_then_on(kubectl_default, pod):
    attach = kubectl_default.popen("attach", "p")
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in attach.stdout], daemon=True).start()
    try:
        got = ""
        for n in range(40):  # the attach starts at the log's end: write until a line comes through
            with pod.open("a") as handle:
                handle.write(f"attached {n}\n")
            try:
                got = lines.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        assert got.startswith("attached ")
        assert "line 3" not in got  # nothing from before the attach
    finally:
        attach.kill()
        attach.wait()


@pytest.mark.parametrize("version", ["1.27", "1.29", "1.30", "1.31", "1.33"])
def test_each_kubectl_version_execs(apiserver, pod, version):
    import os

    path = f"/usr/lib/google-cloud-sdk/bin/kubectl.{version}"
    if not os.path.exists(path):
        pytest.skip(f"kubectl {version} is not installed on this machine")
    p = subprocess.run([path, "exec", "-i", "p", "--", "sh", "-c", "cat; exit 7"], input="in\n", text=True,
                       capture_output=True, check=False, timeout=60, env=apiserver.env())  # fmt: skip
    # 1.30+: WebSocket (v5.channel.k8s.io); before: SPDY/3.1 streams (v4.channel.k8s.io)
    assert (p.returncode, p.stdout) == (7, "in\n"), p.stderr


def test_the_agent_gives_pod_streams_to_the_api_servers_node_only():
    import io

    from emu.node.agent.__main__ import make_handler

    nodes = [types.SimpleNamespace(name="cp", role="control-plane", node_ip="10.0.0.2"),
             types.SimpleNamespace(name="w1", role="worker", node_ip="10.0.0.3")]  # fmt: skip
    view = types.SimpleNamespace(state=types.SimpleNamespace(nodes=nodes, pods={}), is_hub=False,
                                 node_by_ip={n.node_ip: n.name for n in nodes})  # fmt: skip
    handle = make_handler(types.SimpleNamespace(node="w1", view=view,
                                                api_pods=types.SimpleNamespace(pods_view=lambda state: state)))
    for client_address, allowed in (("10.0.0.3", False), ("127.0.0.1", False), ("10.9.9.9", False),
                                    ("10.0.0.2", True)):  # fmt: skip
        out = io.BytesIO()
        request = web.Request("GET", "/exec/default/p/c?command=id", client_address,
                              connection=socket.socket(), rfile=io.BytesIO())  # fmt: skip
        handle(request, out)
        request.connection.close()
        status = out.getvalue().split(b" ", 2)[1]
        # the API server's node gets past the gate (to a 404: no such pod here); the others are refused
        assert status == (b"404" if allowed else b"403"), (client_address, out.getvalue())
