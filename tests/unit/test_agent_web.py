"""The agents' bare-socket HTTP (emu.node.agent.web), against itself and the
standard library's client and server, on real localhost sockets."""

import http.client
import io
import http.server
import json
import socket
import threading

import pytest

from emu.node.agent import web


@pytest.fixture
def server():
    seen = []

    def handle(request: web.Request, wfile) -> bool:
        seen.append(request)
        if request.path == "/stream":
            wfile.write(web.stream_head())
            for i in range(3):
                wfile.write(json.dumps({"n": i}).encode() + b"\n")
            return False
        if request.path == "/close":
            wfile.write(web.response(200, b"bye", close=True))
            return False
        wfile.write(web.response(200 if request.path == "/ok" else 404, json.dumps({"echo": request.body.decode()}).encode()))
        return True

    instance = web.Server(("127.0.0.1", 0), handle)
    threading.Thread(target=instance.serve_forever, daemon=True).start()
    yield instance, seen
    instance.close()


def test_requests_share_one_kept_alive_connection(server):
    instance, seen = server
    client = web.Connection("127.0.0.1", instance.port, timeout=2)
    assert client.request("POST", "/ok", b'{"a": 1}') == (200, b'{"echo": "{\\"a\\": 1}"}')
    first = client.sock
    assert client.request("GET", "/missing")[0] == 404
    assert client.sock is first
    assert [(r.method, r.path, r.client) for r in seen] == [("POST", "/ok", "127.0.0.1"), ("GET", "/missing", "127.0.0.1")]
    assert seen[0].headers["content-type"] == "application/json"
    client.close()


def test_a_connection_the_server_closed_is_opened_again(server):
    instance, _ = server
    client = web.Connection("127.0.0.1", instance.port, timeout=2)
    assert client.request("GET", "/close") == (200, b"bye")
    assert client.sock is None  # Connection: close honoured
    assert client.request("GET", "/ok")[0] == 200


def test_a_stream_is_read_line_by_line(server):
    instance, _ = server
    lines = web.Connection("127.0.0.1", instance.port, timeout=2).stream("/stream")
    assert [json.loads(lines.readline()) for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert lines.readline() == b""


def test_the_standard_librarys_client_understands_the_server(server):
    # curl and `emu` ask agents too; they speak full HTTP/1.1.
    instance, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=2)
    connection.request("GET", "/ok")
    answer = connection.getresponse()
    assert answer.status == 200 and json.loads(answer.read()) == {"echo": ""}


def test_malformed_and_oversized_requests_close_the_connection(server):
    instance, seen = server
    for junk in (b"NOT HTTP\r\n\r\n", b"POST /ok HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", b"GET /ok HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n"):
        with socket.create_connection(("127.0.0.1", instance.port), 2) as sock:
            sock.sendall(junk)
            assert sock.recv(100) == b""  # closed, no answer, nothing handled
    assert seen == []


def test_probe_status_against_the_standard_librarys_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(204 if self.headers["User-Agent"] == "kube-probe/emu" else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert web.get_status("127.0.0.1", httpd.server_address[1], "/healthz", 2) == 204
    finally:
        httpd.shutdown()
    with pytest.raises(OSError):
        web.get_status("127.0.0.1", 1, "/", 1)


def test_the_wait_program_waits_for_ports():
    """emu.node.agent.wait, for containers without an agent: its options, and the
    ports that still refuse at the deadline."""
    import socket
    import time

    from emu.node.agent import wait

    listening = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    free = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    try:
        open_ = f"127.0.0.1:{listening.getsockname()[1]}"
        assert wait.wait_ports([open_, free], time.time() + 0.3) == [free]
        assert wait.wait_ports([open_], time.time() + 5) == []
    finally:
        listening.close()
    assert wait.parse_options(["--timeout", "70", "--port", "10.0.0.2:80", "--port", "10.0.0.3:80"]) == {
        "timeout": 70.0, "port": ["10.0.0.2:80", "10.0.0.3:80"]}  # fmt: skip
    for bad in (["--timeout"], ["--timeout", "x"], ["--generation", "3"]):
        with pytest.raises(SystemExit, match="usage"):
            wait.parse_options(bad)


def test_the_agent_answers_a_wait_once_its_sync_is_done_and_its_pods_ready(tmp_path):
    """GET /wait (what `emu up` asks each node's agent): answered when the agent
    has synced the generation and counts no pod unready, not polled; a pod left
    unready is reported when the ready timeout runs out, and bad parameters are
    a 400 before anything waits."""
    import emu.node.agent.__main__ as main

    agent = main.Agent("cp", snapshot=str(tmp_path / "state.json"))

    def synced(generation: int, ready: dict) -> None:
        with agent.synced:
            agent.synced_ready, agent.synced_generation = ready, generation
            agent.synced.notify_all()

    # Timeouts of an hour: the wait can only end within the 60 s bound below by being
    # woken when the pod became ready, never by running out.
    answers: list[dict] = []
    waiting = threading.Thread(target=lambda: answers.append(agent.wait(2, [], timeout=3600, ready_timeout=3600)),
                               daemon=True)  # fmt: skip
    waiting.start()
    synced(2, {"a": False})
    synced(2, {"a": True})
    waiting.join(60)
    assert answers == [{"ports_left": [], "programmed": True, "unready": []}], "not woken when the pod became ready"
    agent.synced_ready = {"a": False}
    assert agent.wait(2, [], timeout=10, ready_timeout=0.2)["unready"] == ["a"]
    assert agent.wait(3, [], timeout=0.2, ready_timeout=5) == {"ports_left": [], "programmed": False, "unready": None}

    assert main.wait_options("generation=4&timeout=70&port=10.0.0.2:80&port=10.0.0.3:80") == {
        "generation": 4, "timeout": 70.0, "ready_timeout": 15.0, "ports": ["10.0.0.2:80", "10.0.0.3:80"]}  # fmt: skip
    handle = main.make_handler(agent)
    for bad in ("/wait?generation=x", "/wait?timeout=nan", "/wait?timeout=1e9", "/wait?colour=red"):
        out = io.BytesIO()
        handle(web.Request("GET", bad, "127.0.0.1", {}, b""), out)
        assert out.getvalue().startswith(b"HTTP/1.1 400"), bad
