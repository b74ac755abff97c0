"""emu.testing's pure parts: dig's output read as a pod's answer, and the testinfra host spec."""

import pytest

from emu.testing.helpers import parse_dig

NOERROR = """\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242
;; flags: qr aa rd; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; ANSWER SECTION:
echo.default.svc.cluster.local.	5	IN	A	10.244.1.3
echo.default.svc.cluster.local.	5	IN	A	10.244.0.4
"""

SRV = """\
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 7
;; ANSWER SECTION:
_http._tcp.echo.default.svc.cluster.local. 5 IN	SRV 0 100 80 echo.default.svc.cluster.local.
"""

# +search: one reply a try; the last one counts.
SEARCHED = """\
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1
;; ANSWER SECTION:
stale.example.	5	IN	A	192.0.2.1
;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 2
;; flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1
"""

NO_SERVER = ";; communications error to 10.96.0.10#53: timed out\n;; no servers could be reached\n"


def test_an_answer_has_its_status_and_records():
    answer = parse_dig("echo", "A", NOERROR)
    assert answer.status == "NOERROR"
    assert answer.addresses == ["10.244.0.4", "10.244.1.3"]
    assert [(r.name, r.ttl, r.type) for r in answer.records] == [("echo.default.svc.cluster.local.", 5, "A")] * 2


def test_records_other_than_addresses_keep_their_data():
    answer = parse_dig("_http._tcp.echo", "SRV", SRV)
    assert answer.data == ["0 100 80 echo.default.svc.cluster.local."]
    assert answer.addresses == []


@pytest.mark.parametrize("output, status", [(SEARCHED, "NXDOMAIN"), (NO_SERVER, "NO-REPLY"), ("", "NO-REPLY")])
def test_the_last_reply_counts_and_no_reply_is_named(output, status):
    answer = parse_dig("x", "A", output)
    assert answer.status == status and answer.records == []


def test_a_pod_host_spec_goes_through_testinfra_to_emus_backend():
    testinfra = pytest.importorskip("testinfra")
    from emu.testing.backend import PodBackend, hostspec, register

    register()
    spec = hostspec("client", "lab", namespace="team-a", container="shell")
    assert spec == "emu://client?context=lab&namespace=team-a&container=shell"
    backend = testinfra.get_host(spec).backend
    assert isinstance(backend, PodBackend)
    assert (backend.pod, backend.container, backend._cluster_name) == ("team-a/client", "shell", "lab")
    assert testinfra.get_host("emu://kube-system.coredns?context=lab").backend.pod == "kube-system.coredns"
