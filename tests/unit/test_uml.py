"""The User-mode Linux guest's pieces that run anywhere: the command server's
request handling (run here on the host's own processes) and the names and
command line a guest is started with. Booting real guests:
tests/integration/test_ipvs_uml.py."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from emu.control.runtime import uml, umlguest


def _run(argv, data=b"", timeout=10):
    answer = umlguest.run_request({"argv": argv, "input": base64.b64encode(data).decode(), "timeout": timeout})
    return answer["rc"], base64.b64decode(answer["stdout"]), base64.b64decode(answer["stderr"]), answer["timed_out"]


def test_a_command_gets_its_input_and_gives_its_output_and_code():
    assert _run(["sh", "-c", "cat; echo err >&2; exit 3"], b"hello") == (3, b"hello", b"err\n", False)


def test_a_missing_program_is_an_answer_not_a_crash():
    rc, _, err, _ = _run(["/nonexistent/program"])
    assert rc == 127 and b"/nonexistent/program" in err


def test_a_command_past_its_timeout_is_killed_with_what_it_started():
    started = time.monotonic()
    # The shell's child sleeps on: killing the shell alone would leave it holding the pipe.
    rc, out, _, timed_out = _run(["sh", "-c", "echo begun; sleep 30 & wait"], timeout=0.5)
    assert timed_out and rc == -9 and out == b"begun\n"
    assert time.monotonic() - started < 10


def test_tap_names_fit_the_kernels_limit_and_differ_per_guest():
    names = {uml.tap_name(f"emutest-lab-{i}-worker{i}") for i in range(100)}
    assert len(names) == 100 and all(len(name) <= 15 for name in names)


def test_a_guest_boots_its_own_copy_on_write_layer_and_address(tmp_path):
    guest = uml.Guest("g1", Path("/images/root.img"), "br0", "192.168.213.2/24", gateway="192.168.213.1",
                      state_dir=tmp_path)  # fmt: skip
    line = guest.command_line()
    assert f"ubd0={tmp_path}/guests/g1/root.cow,/images/root.img" in line  # the image itself is never written
    # gro=1: the host's GSO segments read whole (without it a few MB from the host take minutes)
    assert f"vec0:transport=tap,ifname={uml.tap_name('g1')},mac=02:42:c0:a8:d5:02,gro=1" in line
    # (its MAC from its address, as Docker's: the same when it boots again)
    assert "umid=g1" in line and f"uml_dir={tmp_path}/guests/g1" in line
    assert "emu.address=192.168.213.2/24" in line and "emu.gateway=192.168.213.1" in line
    assert f"emu.boot={guest.boot_id}" in line


def test_removing_a_guest_that_never_started_is_harmless(tmp_path):
    (tmp_path / "guests" / "ghost").mkdir(parents=True)
    (tmp_path / "guests" / "ghost" / "pid").write_text("1")  # pid 1 is not a UML process: never signalled
    uml.remove_guest("ghost", tmp_path)
    assert uml.guests(tmp_path) == []
