"""The agents' bare-socket HTTP (emu.agent.web), against itself and the
standard library's client and server, on real localhost sockets."""

import http.client
import http.server
import json
import socket
import threading

import pytest

from emu.agent import web


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


def test_the_wait_program_asks_the_agent_until_no_pod_is_unready():
    """emu.agent.wait, as `emu up` runs it in every node: its options, and its
    questions to the agent on one kept-alive connection."""
    import time

    from emu.agent import wait

    answers = [["default/a@1"], ["default/a@1"], []]
    asked = []

    def handle(request: web.Request, wfile) -> bool:
        asked.append(request.path)
        wfile.write(web.response(200, json.dumps(answers.pop(0) if answers else []).encode()))
        return True

    instance = web.Server(("127.0.0.1", 0), handle)
    threading.Thread(target=instance.serve_forever, daemon=True).start()
    try:
        assert wait.wait_unready(time.time() + 5, port=instance.port) == []
        assert asked == ["/unready"] * 3
    finally:
        instance.close()
    assert wait.parse_options(["--timeout", "70", "--generation", "3", "--port", "10.0.0.2:80", "--port", "10.0.0.3:80"]) == {
        "timeout": 70.0, "generation": 3, "ready_timeout": 15.0, "port": ["10.0.0.2:80", "10.0.0.3:80"]}  # fmt: skip
    for bad in (["--timeout"], ["--generation", "x"], ["--colour", "red"]):
        with pytest.raises(SystemExit, match="usage"):
            wait.parse_options(bad)
