"""kube-proxy's IPVS mode as emu renders it (emu plan --rules), the differences a sync
writes, and its refusal on docker nodes. A real kernel: tests/integration/test_ipvs_uml.py."""

from __future__ import annotations

import pytest

from emu.node.proxy import ipvs, proxier
from emu.node.proxy.base import KernelMissing
from tests.unit.test_proxy_nftables import endpoints, lab


def test_plan_matches_golden(golden):
    s = lab()
    proxy = proxier("ipvs")
    golden("ipvs_w1.plan", proxy.text(proxy.render(s, "w1", endpoints(s))))


def test_virtual_servers_follow_kube_proxy():
    s = lab()
    rules = ipvs.render(s, "w1", endpoints(s))
    by_address = {vs.address: vs for vs in rules.servers}
    web = by_address["10.96.0.50:80"]
    assert web.real_servers == ["10.244.1.2:8080", "10.244.2.2:8080"] and web.persistence is None
    assert by_address["10.96.0.51:80"].persistence == 60  # ClientIP affinity is IPVS persistence
    node_port = by_address[f"{s.node('w1').node_ip}:30081"]  # externalTrafficPolicy Local: this node's only
    assert node_port.real_servers == ["10.244.1.2:8080"]
    assert "10.96.0.50,tcp:80" in rules.sets["KUBE-CLUSTER-IP"]
    assert "10.244.1.2,tcp:8080,10.244.1.2" in rules.sets["KUBE-LOOP-BACK"]  # hairpin, local endpoints only
    assert "10.244.2.2,tcp:8080,10.244.2.2" not in rules.sets["KUBE-LOOP-BACK"]
    assert rules.sets["KUBE-NODE-PORT-TCP"] == ["30080", "30081", "30082"]
    assert rules.sets["KUBE-NODE-PORT-LOCAL-TCP"] == ["30081"]
    assert "10.96.0.50" in rules.addresses and "10.96.0.50" in rules.sets["KUBE-IPVS-IPS"]
    text = ipvs.ipvsadm_text(rules.servers)
    assert "-A -t 10.96.0.51:80 -s rr -p 60" in text
    assert "-a -t 10.96.0.50:80 -r 10.244.2.2:8080 -m -w 1" in text
    assert "-A -u 10.96.0.53:80 -s rr" in text  # a UDP service without endpoints: no real server


def test_kernel_without_ip_vs_is_named(monkeypatch):
    monkeypatch.setattr(ipvs.os.path, "exists", lambda path: False)
    with pytest.raises(KernelMissing, match=r"needs the kernel module ip_vs.*no /proc/net/ip_vs"):
        ipvs.require_ip_vs()


def test_docker_nodes_are_refused_even_with_ip_vs(monkeypatch):
    monkeypatch.setattr(ipvs.os.path, "exists", lambda path: True)
    with pytest.raises(KernelMissing, match="User-mode Linux nodes.*not yet on docker nodes"):
        ipvs.refuse_up()


def _without(state, pod_name):
    return endpoints(state, {p.uid: p.name != pod_name for p in state.pods.values()})


def test_a_sync_without_changes_writes_nothing():
    s = lab()
    rules = ipvs.render(s, "w1", endpoints(s))
    assert all(text == "" for text in ipvs.changes(rules, rules).values())
    assert proxier("ipvs").text(rules, rules) == "\n"


def test_a_new_node_gets_everything_and_the_plan_shows_it():
    s = lab()
    rules = ipvs.render(s, "w1", endpoints(s))
    whole = ipvs.changes(rules, None)
    assert whole["ipvsadm"] == ipvs.ipvsadm_text(rules.servers)
    assert whole["ipset"].count("create ") == len(ipvs.IPSETS)
    assert whole["ip"].count("addr replace") == len(rules.addresses) and "link add" not in whole["ip"]
    text = proxier("ipvs").text(rules)
    for body in whole.values():
        assert body.rstrip("\n") in text  # `emu plan --rules` is exactly what apply writes


def test_a_gone_endpoint_deletes_only_its_real_servers():
    s = lab()
    before = ipvs.render(s, "w1", endpoints(s))
    after = ipvs.render(s, "w1", _without(s, "web-b"))
    diff = ipvs.changes(after, before)
    lines = diff["ipvsadm"].splitlines()
    assert lines and all(line.startswith("-d ") and line.endswith("-r 10.244.2.2:8080") for line in lines)
    # every virtual server that had it, and no other
    had = [vs.address for vs in before.servers if "10.244.2.2:8080" in vs.real_servers]
    assert sorted(line.split()[2] for line in lines) == sorted(had)
    assert diff["ip"] == ""  # the service addresses stay
    assert diff["iptables"] == ""  # the chains match sets, not endpoints: unchanged
    # and back again: the same real servers added, nothing else
    back = ipvs.changes(before, after)["ipvsadm"].splitlines()
    assert sorted(line.replace("-a ", "-d ").replace(" -m -w 1", "") for line in back) == sorted(lines)


def test_a_local_endpoint_leaving_leaves_the_hairpin_set_too():
    s = lab()
    before = ipvs.render(s, "w1", endpoints(s))
    after = ipvs.render(s, "w1", _without(s, "web-a"))  # web-a runs on w1
    assert "del KUBE-LOOP-BACK 10.244.1.2,tcp:8080,10.244.1.2 -exist" in ipvs.changes(after, before)["ipset"]


def test_affinity_changed_is_an_edit_in_place():
    s = lab()
    before = ipvs.render(s, "w1", endpoints(s))
    after = ipvs.render(s, "w1", endpoints(s))
    sticky = next(vs for vs in after.servers if vs.persistence)
    sticky.persistence = 300
    diff = ipvs.changes(after, before)["ipvsadm"]
    assert diff == f"-E -t {sticky.address} -s rr -p 300\n"  # -E keeps the server and its connections
    sticky.persistence = None
    assert ipvs.changes(after, before)["ipvsadm"] == f"-E -t {sticky.address} -s rr\n"


def test_a_deleted_service_goes_from_every_tool():
    s = lab()
    before = ipvs.render(s, "w1", endpoints(s))
    after = ipvs.render(s, "w1", endpoints(s))
    gone = [vs for vs in after.servers if vs.address.startswith("10.96.0.50:")]
    after.servers = [vs for vs in after.servers if vs not in gone]
    after.addresses = [a for a in after.addresses if a != "10.96.0.50"]
    after.sets = {name: [e for e in entries if not e.startswith("10.96.0.50")] for name, entries in after.sets.items()}
    diff = ipvs.changes(after, before)
    assert diff["ipvsadm"] == "-D -t 10.96.0.50:80\n"
    assert diff["ip"] == "addr del 10.96.0.50/32 dev kube-ipvs0\n"
    assert "del KUBE-CLUSTER-IP 10.96.0.50,tcp:80 -exist" in diff["ipset"]
    assert "del KUBE-IPVS-IPS 10.96.0.50 -exist" in diff["ipset"]


def test_the_kernels_listing_reads_back_to_the_same_servers():
    s = lab()
    rules = ipvs.render(s, "w1", endpoints(s))
    # `ipvsadm -S -n` lists what `ipvsadm -R` was given, in the kernel's own order
    lines = ipvs.ipvsadm_text(rules.servers).splitlines(True)
    blocks, block = [], []
    for line in lines:
        if line.startswith("-A") and block:
            blocks.append(block)
            block = []
        block.append(line)
    blocks.append(block)
    listed = ipvs.parse_ipvsadm_save("".join(line for block in reversed(blocks) for line in block))
    assert ipvs.ipvsadm_diff_text(rules.servers, listed) == ""
    assert ipvs.ipvsadm_diff_text(rules.servers, []) == ipvs.ipvsadm_text(rules.servers)


def test_a_real_server_drained_by_hand_is_put_back_to_weight_one():
    s = lab()
    rules = ipvs.render(s, "w1", endpoints(s))
    drained = "-a -t 10.96.0.50:80 -r 10.244.2.2:8080 -m -w "
    kernel = ipvs.parse_ipvsadm_save(ipvs.ipvsadm_text(rules.servers).replace(drained + "1", drained + "0"))
    assert ipvs.ipvsadm_diff_text(rules.servers, kernel) == "-e -t 10.96.0.50:80 -r 10.244.2.2:8080 -m -w 1\n"


def test_kernel_listings_are_read():
    assert ipvs.parse_addresses(
        "4: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\\       valid_lft forever\n"
        "4: kube-ipvs0    inet 10.96.0.2/32 scope global kube-ipvs0\\       valid_lft forever\n"
    ) == ["10.96.0.2", "10.96.0.10"]
    sets = ipvs.parse_ipset_save(
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n"
        "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\ncreate KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n"
        "create OTHER hash:ip\nadd OTHER 1.2.3.4\n"
    )
    assert sets == {"KUBE-CLUSTER-IP": ["10.96.0.10,tcp:80"], "KUBE-NODE-PORT-TCP": []}
    # a set that exists is not created again; one that is missing is
    text = ipvs.ipset_diff_text({"KUBE-CLUSTER-IP": ["10.96.0.10,tcp:80"]}, sets)
    assert "create KUBE-CLUSTER-IP" not in text and "create KUBE-LOOP-BACK hash:ip,port,ip" in text
    assert "add KUBE-CLUSTER-IP" not in text


def test_the_cache_renders_the_same_rules_and_reuses_unchanged_ports():
    s = lab()
    cache: dict = {}
    first = ipvs.render(s, "w1", endpoints(s), cache)
    assert first == ipvs.render(s, "w1", endpoints(s))
    again = ipvs.render(s, "w1", _without(s, "web-b"), cache)
    assert again == ipvs.render(s, "w1", _without(s, "web-b"))  # a changed port is made anew
    unchanged = [vs for vs in again.servers if vs.address.startswith("10.96.0.53:")]  # no endpoints either time
    assert unchanged and all(any(vs is old for old in first.servers) for vs in unchanged)
