"""emu.node.agent.wake: the agent's loops sleep on the kernel's word, not on a clock."""

from __future__ import annotations

import threading
import time

from emu.node.agent import wake


def test_wake_is_an_event_that_also_watches_file_descriptors():
    event = wake.Wake()
    started = time.monotonic()
    assert event.wait(0.05) == [] and time.monotonic() - started >= 0.04  # not set: times out
    event.set()
    event.set()
    assert event.wait(5) == []  # set: at once (its own pipe is not reported)
    event.clear()
    assert event.wait(0) == []
    other = wake.Wake()
    threading.Timer(0.05, other.set).start()
    fd = other._read
    assert event.wait(5, [fd]) == [fd]  # another descriptor made readable wakes it too


def test_node_changes_see_a_namespace_file_go_and_a_folder_made_later(tmp_path):
    netns = tmp_path / "netns"
    changes = wake.NodeChanges([str(netns)])
    assert changes.inotify is not None and changes.fds()
    assert not changes.complete  # the folder is not there yet: look every POD_CHECK seconds
    netns.mkdir()
    changes.drain()
    assert changes.complete == (changes.links is not None)
    assert wake.readable([changes.inotify]) == []
    (netns / "pod-a").write_text("")
    assert wake.readable([changes.inotify]) == [changes.inotify]
    changes.drain()
    assert wake.readable([changes.inotify]) == []
    (netns / "pod-a").unlink()  # `ip netns del`
    assert wake.readable([changes.inotify]) == [changes.inotify]
    changes.drain()
    netns.rmdir()
    changes.drain()
    assert not changes.complete  # its watch went with it
