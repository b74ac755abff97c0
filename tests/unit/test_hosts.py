"""emu.control.hosts without SSH or Docker: what probe output means, the table, and prepare's decisions."""

from __future__ import annotations

import pytest

from emu.errors import EmuError
from emu.control.hosts import (
    ERROR,
    HOST_LABEL,
    INFO,
    OK,
    WARN,
    Finding,
    HostReport,
    Probe,
    SwarmNode,
    SwarmPlan,
    SwarmState,
    access_command,
    access_denied,
    check_members,
    evaluate,
    format_reports,
    group_shipments,
    images_to_ship,
    is_debian_like,
    node_label_updates,
    parse_values,
    openssh_command,
    parse_probe,
    plan_swarm,
    probe_script,
    stale_nodes,
    sysctl_changes,
)
from emu.api.topology.model import Host


def hosts(n: int = 3) -> list[Host]:
    return [Host(name=f"h{i}", address=f"10.0.0.{i}") for i in range(1, n + 1)]


GOOD = """\
kernel=6.1.0-18-amd64
uid=0
docker_rc=0
docker_out=24.0.7
swarm=inactive
dockerd=yes
mod_vxlan=loaded
mod_br_netfilter=module
vxlan_probe=ok
ip_forward=1
gc_thresh3=16384
mtu=eth0 1500
disk=/var/lib/docker 52428800
"""


def ports(targets: list[str], result: str = "refused") -> str:
    return "".join(f"port {t} {p} {result}\n" for t in targets for p in (2377, 7946))


def good_probes(hs: list[Host], result: str = "refused", swarm: str = "inactive") -> dict[str, Probe]:
    probes = {}
    for h in hs:
        others = [o.address for o in hs if o.name != h.name]
        probe = parse_probe(GOOD.replace("swarm=inactive", f"swarm={swarm}") + ports(others, result))
        probe.clock_skew, probe.clock_uncertainty = 0.01, 0.002
        probes[h.name] = probe
    return probes


def levels(report: HostReport, check: str) -> list[str]:
    return [f.level for f in report.findings if f.check == check]


# -- the probe -------------------------------------------------------------------------------------------------


def test_parse_probe_reads_values_and_ports():
    probe = parse_probe("docker_out=24.0.7 \nmtu=eth0 1500\nport 10.0.0.2 2377 error No route to host\n")
    assert probe.values == {"docker_out": "24.0.7", "mtu": "eth0 1500"}
    assert probe.ports == {("10.0.0.2", 2377): "error No route to host"}


def test_probe_script_quotes_what_it_is_given():
    host = Host(name="h1", address="10.0.0.1", docker_socket="/run/my docker.sock")
    script = probe_script(host, ["10.0.0.2", "10.0.0.3"])
    assert "export DOCKER_HOST='unix:///run/my docker.sock'" in script
    assert "for target in 10.0.0.2 10.0.0.3; do" in script
    assert "__" not in script.replace("__PORT", "")  # every placeholder filled


# -- evaluating probes ------------------------------------------------------------------------------------------


def test_healthy_hosts_before_a_swarm_have_no_problems():
    hs = hosts()
    reports = evaluate(hs, good_probes(hs))
    assert [r.host for r in reports] == ["h1", "h2", "h3"]
    for report in reports:
        assert report.ok and not report.problems, report.findings
        assert report.finding("docker").value == "24.0.7"
        assert report.finding("ports").value == "not listening"
        notes = [f.message for f in report.findings if f.level == INFO]
        assert any("not listening (swarm not initialised)" in n for n in notes)
        assert any("UDP 4789" in n for n in notes)


def test_ports_in_a_swarm_refused_on_a_workers_2377_is_fine_but_7946_is_not():
    hs = hosts(2)
    probes = good_probes(hs, swarm="active")
    probes["h1"].ports = {("10.0.0.2", 2377): "refused", ("10.0.0.2", 7946): "refused"}
    report = evaluate(hs, probes)[0]
    problems = report.problems
    assert len(problems) == 1 and problems[0].level == WARN
    assert "TCP 7946 from h1 to h2" in problems[0].message


def test_a_timed_out_port_is_blocked_and_names_both_hosts():
    hs = hosts(2)
    probes = good_probes(hs)
    probes["h2"].ports[("10.0.0.1", 2377)] = "timeout"
    report = evaluate(hs, probes)[1]
    [error] = report.errors
    assert error.check == "ports" and error.value == "blocked"
    assert "TCP 2377 from h2 to h1 (10.0.0.1): timed out" in error.message
    assert "allow TCP 2377, 7946 and UDP 4789, 7946" in error.fix


def test_unreachable_ssh_is_the_only_finding():
    hs = hosts(2)
    probes = good_probes(hs)
    probes["h2"] = Probe(ssh_error="timed out")
    report = evaluate(hs, probes)[1]
    assert [(f.check, f.level) for f in report.findings] == [("ssh", ERROR)]
    assert "root@10.0.0.2:22" in report.findings[0].message and "timed out" in report.findings[0].message


def test_engine_down_and_missing_say_what_to_do():
    hs = hosts(2)
    probes = good_probes(hs)
    probes["h1"].values.update(docker_rc="1", docker_out="Cannot connect to the Docker daemon")
    probes["h2"].values.update(docker_rc="127", docker_out="docker: command not found", dockerd="no")
    down, missing = evaluate(hs, probes)
    assert "no Docker engine answers at /var/run/docker.sock on h1" in down.errors[0].message
    assert "systemctl start docker" in down.errors[0].fix
    assert "emu hosts prepare" in missing.errors[0].fix


def test_kernel_sysctl_mtu_clock_and_disk_warnings():
    hs = hosts(1)
    probes = good_probes(hs)
    probes["h1"].values.update(mod_vxlan="missing", mod_br_netfilter="missing", ip_forward="0",
                               mtu="ens3 1450", disk="/var/lib/docker 1048576")
    probes["h1"].clock_skew = -2.5
    report = evaluate(hs, probes)[0]
    assert levels(report, "vxlan") == [ERROR]
    assert levels(report, "br_netfilter") == [WARN]
    assert levels(report, "ip_forward") == [WARN]
    mtu = report.finding("mtu")
    assert mtu.level == WARN and "at most 1400" in mtu.message
    clock = report.finding("clock")
    assert clock.level == WARN and "2.5 s behind" in clock.message
    disk = report.finding("disk")
    assert disk.level == WARN and "1.1 GB free under /var/lib/docker on h1" in disk.message


def test_a_failed_vxlan_probe_is_an_error():
    hs = hosts(1)
    probes = good_probes(hs)
    probes["h1"].values["vxlan_probe"] = "failed: RTNETLINK answers: Operation not supported"
    report = evaluate(hs, probes)[0]
    assert report.finding("vxlan").level == ERROR
    assert "Operation not supported" in report.finding("vxlan").message


def test_clock_within_the_measurement_uncertainty_is_fine():
    hs = hosts(1)
    probes = good_probes(hs)
    probes["h1"].clock_skew, probes["h1"].clock_uncertainty = 1.3, 0.5
    assert evaluate(hs, probes)[0].finding("clock").level == OK


# -- the table ---------------------------------------------------------------------------------------------------


def test_format_reports_table_problems_and_summary():
    reports = [
        HostReport("h1", "10.0.0.1", [Finding("ssh", OK, "ok"), Finding("docker", OK, "24.0.7"),
                                      Finding("ports", INFO, "", "UDP is not tested")]),
        HostReport("h2", "10.0.0.2", [Finding("ssh", ERROR, "unreachable", "SSH to root@10.0.0.2:22 failed",
                                              "check that h2 is up")]),
    ]
    text = format_reports(reports)
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "ADDRESS", "SSH", "DOCKER"]  # no column for notes alone
    assert lines[1].split() == ["h1", "10.0.0.1", "ok", "24.0.7"]
    assert lines[2].split() == ["h2", "10.0.0.2", "unreachable", "(ERROR)", "-"]
    assert "  h2: error: SSH to root@10.0.0.2:22 failed" in text
    assert "      fix: check that h2 is up" in text
    assert "Notes:\n  UDP is not tested" in text
    assert lines[-1] == "2 hosts not ready: 1 error, 0 warnings"


# -- swarm decisions ---------------------------------------------------------------------------------------------


def states(**kw: SwarmState) -> dict[str, SwarmState]:
    base = {f"h{i}": SwarmState() for i in (1, 2, 3)}
    base.update(kw)
    return base


def test_fresh_hosts_the_first_initialises_the_others_join():
    plan = plan_swarm(hosts(), states())
    assert plan == SwarmPlan(manager="h1", init=True, join=["h2", "h3"], leave_first=[], members=[])


def test_an_existing_manager_leads_and_members_stay():
    plan = plan_swarm(hosts(), states(h2=SwarmState("active", True, "n2", "c1"), h3=SwarmState("active", False, "n3")))
    assert plan == SwarmPlan(manager="h2", init=False, join=["h1"], leave_first=[], members=["h3"])


def test_second_prepare_does_nothing():
    full = states(h1=SwarmState("active", True, "n1", "c1"), h2=SwarmState("active", False, "n2"),
                  h3=SwarmState("active", False, "n3"))
    plan = plan_swarm(hosts(), full)
    assert plan.manager == "h1" and not plan.init and not plan.join and plan.members == ["h2", "h3"]
    check_members(plan, full, {"n1", "n2", "n3"})


def test_half_joined_hosts_leave_first():
    plan = plan_swarm(hosts(), states(h3=SwarmState("pending")))
    assert plan.join == ["h2", "h3"] and plan.leave_first == ["h3"]


def test_managers_of_different_swarms_are_refused():
    with pytest.raises(EmuError, match="h1, h2 manage different swarms"):
        plan_swarm(hosts(), states(h1=SwarmState("active", True, "n1", "c1"), h2=SwarmState("active", True, "n2", "c2")))


def test_a_worker_of_a_foreign_swarm_is_refused():
    with pytest.raises(EmuError, match="h2 is a worker in a swarm that none of these hosts manages"):
        plan_swarm(hosts(), states(h2=SwarmState("active", False, "n2")))


def test_a_member_of_another_swarm_is_refused():
    full = states(h1=SwarmState("active", True, "n1", "c1"), h3=SwarmState("active", False, "x3"))
    plan = plan_swarm(hosts(), full)
    with pytest.raises(EmuError, match="h3 is in another swarm than h1's"):
        check_members(plan, full, {"n1"})


def test_node_labels_and_stale_nodes():
    hs = hosts()
    ids = {"h1": "n1", "h2": "n2", "h3": "n3"}
    nodes = [
        SwarmNode("n1", "ready", {HOST_LABEL: "h1"}, "10.0.0.1"),
        SwarmNode("n2", "ready", {}, "10.0.0.2"),
        SwarmNode("n3", "ready", {HOST_LABEL: "h2"}, "10.0.0.3"),
        SwarmNode("old2", "down", {HOST_LABEL: "h2"}, "10.0.0.2"),  # h2 before it left and rejoined
        SwarmNode("old9", "down", {}, "10.0.0.9"),  # not ours: left alone
        SwarmNode("old3", "ready", {}, "10.0.0.3"),  # h3 before it rejoined; the manager has not noticed yet
        SwarmNode("other", "ready", {}, "10.0.0.8"),  # not ours: left alone
    ]
    assert node_label_updates(nodes, ids) == {"n2": "h2", "n3": "h3"}
    assert stale_nodes(nodes, ids, hs) == ["old2", "old3"]


# -- sysctls, images, install ----------------------------------------------------------------------------------


def test_sysctls_only_raise_and_skip_missing_keys():
    current = {
        "net.ipv4.ip_forward": 0,
        "net.ipv4.neigh.default.gc_thresh1": 8192,  # higher than emu's: left
        "net.ipv4.neigh.default.gc_thresh2": 1024,
        "net.ipv4.neigh.default.gc_thresh3": None,  # not in this namespace
    }
    assert sysctl_changes(current) == {"net.ipv4.ip_forward": 1, "net.ipv4.neigh.default.gc_thresh2": 8192}
    assert sysctl_changes({"net.ipv4.ip_forward": 1}) == {}


def test_images_to_ship_by_tag_and_id():
    local = {"emu/node:abc": "sha256:1", "busybox:1": "sha256:2"}
    remote = {
        "h1": {"emu/node:abc": "sha256:1", "busybox:1": "sha256:2"},  # has both
        "h2": {"emu/node:abc": None, "busybox:1": "sha256:2"},  # lacks the node image
        "h3": {"emu/node:abc": "sha256:old", "busybox:1": None},  # same tag, other image; lacks busybox
    }
    plan = images_to_ship(local, remote)
    assert plan == {"h2": ["emu/node:abc"], "h3": ["emu/node:abc", "busybox:1"]}
    assert group_shipments(plan) == {("emu/node:abc",): ["h2"], ("emu/node:abc", "busybox:1"): ["h3"]}
    assert group_shipments({"h1": ["a"], "h2": ["a"]}) == {("a",): ["h1", "h2"]}
    assert images_to_ship(local, {"h1": dict(local)}) == {}


def test_is_debian_like():
    assert is_debian_like('ID=debian\nVERSION_ID="12"\n')
    assert is_debian_like('ID=linuxmint\nID_LIKE="ubuntu debian"\n')
    assert not is_debian_like('ID="rocky"\nID_LIKE="rhel centos fedora"\n')


def test_openssh_command_uses_the_inventory():
    host = Host(name="h1", address="10.0.0.1", port=2222, user="emu", ssh_key="/k/id", known_hosts="/k/known")
    command = openssh_command(host)
    assert command[-1] == "10.0.0.1"
    assert ["-p", "2222"] == command[command.index("-p"):command.index("-p") + 2]
    assert ["-l", "emu"] == command[command.index("-l"):command.index("-l") + 2]
    assert "UserKnownHostsFile=/k/known" in command and "StrictHostKeyChecking=accept-new" in command
    assert ["-i", "/k/id"] == command[command.index("-i"):command.index("-i") + 2]


# -- access: a non-root SSH user and the engine's socket ---------------------------------------------------------

DENIED = "user=emu\nuid=1001\ngroups=emu,adm\nsock=root docker 660\naccess=denied\n"


def test_a_user_outside_the_sockets_group_is_told_to_join_it_or_use_a_rootless_engine():
    host = Host(name="h2", address="10.0.0.2", user="emu")
    message, fix = access_denied(host, parse_values(DENIED))
    assert "emu may not use the Docker engine at /var/run/docker.sock on h2" in message
    assert "the socket is root:docker, mode 660, and emu is not in the group docker" in message
    assert fix.startswith("add emu to the group docker on h2 (as root: usermod -aG docker emu;")
    assert "set h2's dockerSocket to the socket of a rootless engine emu runs (/run/user/1001/docker.sock)" in fix


def test_a_user_in_the_group_of_a_socket_without_group_rights_is_told_about_the_mode():
    host = Host(name="h2", address="10.0.0.2", user="emu")
    values = parse_values(DENIED.replace("groups=emu,adm", "groups=emu,docker").replace("660", "600"))
    assert "the socket's mode 600 does not let the group docker read and write it" in access_denied(host, values)[0]


def test_access_that_is_ok_or_a_missing_socket_is_no_denial():
    host = Host(name="h2", address="10.0.0.2", user="emu")
    assert access_denied(host, parse_values(DENIED.replace("access=denied", "access=ok"))) is None
    assert access_denied(host, parse_values(DENIED.replace("access=denied", "access=missing"))) is None


def test_check_reports_a_denied_socket_as_the_docker_error():
    hs = hosts(2)
    probes = good_probes(hs)
    probes["h2"].values.update(parse_values(DENIED), docker_rc="1", docker_out="permission denied while trying")
    docker = next(f for f in evaluate(hs, probes)[1].findings if f.check == "docker")
    assert (docker.level, docker.value) == (ERROR, "denied") and "usermod -aG docker emu" in docker.fix


def test_the_access_command_quotes_the_socket():
    host = Host(name="h1", address="10.0.0.1", docker_socket="/run/my engine/docker.sock")
    assert "s='/run/my engine/docker.sock'" in access_command(host)


# -- jump hosts ----------------------------------------------------------------------------------------------------


def test_a_jump_host_is_user_at_host_port_with_the_hosts_user_and_port_22_by_default():
    assert Host(name="h1", address="10.0.0.1", jump="ops@bastion:2222").jump_target == ("ops", "bastion", 2222)
    assert Host(name="h1", address="10.0.0.1", user="emu", jump="bastion").jump_target == ("emu", "bastion", 22)
    assert Host(name="h1", address="10.0.0.1", jump="me@[2001:db8::1]:22").jump_target == ("me", "2001:db8::1", 22)
    assert Host(name="h1", address="10.0.0.1").jump_target is None
    for bad in ("me@bastion:ssh", "me@bastion:0", "me@bastion:70000", "me@", "@bastion", "me@bas tion"):
        with pytest.raises(ValueError, match="is not a jump host"):
            Host(name="h1", address="10.0.0.1", jump=bad)


def test_the_jump_host_gets_the_inventorys_key_and_known_hosts():
    host = Host(name="h1", address="10.0.0.1", jump="ops@bastion:2222", ssh_key="/k/id", known_hosts="/k/known")
    command = openssh_command(host)
    proxy = next(o for o in command if o.startswith("ProxyCommand="))
    assert proxy.startswith("ProxyCommand=ssh -o BatchMode=yes")
    for part in ("UserKnownHostsFile=/k/known", "-i /k/id", "StrictHostKeyChecking=accept-new",
                 "-W '[%h]:%p' -p 2222 -l ops bastion"):
        assert part in proxy, proxy
    assert command[-1] == "10.0.0.1"


def test_an_inventory_wide_jump_host_serves_the_hosts_that_name_none(tmp_path):
    from emu.api.topology.load import load_inventory

    path = tmp_path / "hosts.yaml"
    path.write_text("jump: ops@bastion\nhosts:\n- {name: h1, address: 10.0.0.1}\n"
                    "- {name: h2, address: 10.0.0.2, jump: 'me@other:2200'}\n")
    assert [h.jump for h in load_inventory(path)] == ["ops@bastion", "me@other:2200"]


# -- a host key that changed -------------------------------------------------------------------------------------

OPENSSH_CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Offending ED25519 key in /k/known:2
  remove with:
  ssh-keygen -f '/k/known' -R "[10.0.0.2]:2222"
Host key for [10.0.0.2]:2222 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_a_changed_key_names_the_host_the_line_and_the_command(tmp_path):
    import paramiko
    from emu.control.hosts import host_key_changed, known_hosts_line, openssh_host_key_changed

    known = tmp_path / "known"
    salt_hashed = paramiko.HostKeys.hash_host("[10.0.0.2]:2222")
    known.write_text(f"10.0.0.1 ssh-ed25519 AAAA\n{salt_hashed} ssh-rsa BBBB\n")
    assert known_hosts_line(str(known), "[10.0.0.2]:2222") == 2 and known_hosts_line(str(known), "10.0.0.3") is None
    host = Host(name="h2", address="10.0.0.2", port=2222, known_hosts=str(known))
    error = host_key_changed(host, "[10.0.0.2]:2222")
    said = f"the SSH host key of [10.0.0.2]:2222 changed: it is not the ssh-rsa key on line 2 of {known}"
    assert said in error.message
    assert f"ssh-keygen -R '[10.0.0.2]:2222' -f {known}" in error.fix
    from_openssh = openssh_host_key_changed(host, OPENSSH_CHANGED.replace("/k/known", str(known)))
    assert (from_openssh.message, from_openssh.fix) == (error.message, error.fix)
    assert openssh_host_key_changed(host, "ssh: connect to host 10.0.0.2 port 2222: Connection refused") is None


def test_a_changed_key_of_the_jump_host_says_so():
    from emu.control.hosts import host_key_changed

    host = Host(name="h2", address="10.0.0.2", jump="ops@10.0.0.9", known_hosts="/nonexistent")
    assert "the SSH host key of 10.0.0.9 (the jump host of h2) changed" in host_key_changed(host, "10.0.0.9").message


def test_check_reports_a_changed_key_with_its_own_fix():
    hs = hosts(2)
    probes = good_probes(hs)
    probes["h2"] = Probe(ssh_error="the SSH host key of 10.0.0.2 changed", ssh_fix="ssh-keygen -R 10.0.0.2")
    ssh = evaluate(hs, probes)[1].findings[0]
    assert (ssh.level, ssh.value, ssh.fix) == (ERROR, "host key changed", "ssh-keygen -R 10.0.0.2")
