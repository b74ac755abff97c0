"""Pod to service: a virtual IP, DNATed at random to the ready pods behind it."""

from labcheck import traced


def test_the_service_spreads_requests_over_its_pods(lab):
    script = "for i in $(seq 24); do curl -s http://echo/hostname; echo; done"
    names = set(lab.exec("client", ["sh", "-c", script]).output.split())
    echo_pods = {pod.name for pod in lab.state().pods.values() if pod.labels.get("app") == "echo"}
    assert len(names) >= 2 and names <= echo_pods


def test_a_kube_sep_chain_dnats_to_the_pod_that_answered(lab):
    state = lab.state()
    result = traced(lab, "client", "echo")
    dnat = [
        rule
        for place in result["request"]
        for hop in place["hops"]
        for rule in hop["rules"]
        if rule["verdict"].startswith("DNAT")
    ]
    assert len(dnat) == 1 and dnat[0]["chain"].startswith("KUBE-SEP-")
    endpoint = dnat[0]["verdict"].removeprefix("DNAT to ")
    assert result["outcome"]["dnat_to"] == endpoint  # conntrack says the same
    answered = next(pod for pod in state.pods.values() if pod.name == result["probe"]["reply"])
    assert endpoint == f"{answered.ip}:8080"
