"""emu.node.agent.runner: the one loop runner of the agent's jobs, driven by a fake clock."""

import os
import threading
import time

import pytest

from emu.node.agent.runner import Runner, Watchdog
from emu.node.agent.wake import readable


class FakeTime:
    """A clock and a waiter: waiting advances the clock, unless a request is pending."""

    def __init__(self):
        self.now = 0.0
        self.runner = None

    def clock(self) -> float:
        return self.now

    def waiter(self, timeout, fds):
        ready = readable(list(fds))
        if ready or readable([self.runner.wake.read_fd]):
            return ready
        if timeout is None:
            raise AssertionError("would wait forever")
        self.now += timeout
        return []

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make(function, **options):
    fake = FakeTime()
    logs = []
    runner = Runner("job", function, logs.append, clock=fake.clock, waiter=fake.waiter, sleep=fake.sleep, **options)
    fake.runner = runner
    return runner, fake, logs


def test_the_first_run_is_at_once_then_every_max_interval():
    starts = []
    runner, fake, _ = make(lambda requested: starts.append((fake.now, requested)), max_interval=10.0)
    for _ in range(3):
        runner.step()
    assert starts == [(0.0, True), (10.0, False), (20.0, False)]


def test_requests_during_a_run_are_gathered_into_one_run_after_it():
    starts = []

    def job(requested):
        starts.append(fake.now)
        if len(starts) == 1:
            for _ in range(5):
                runner.request()  # five changes while the first run works
        fake.now += 1.0

    runner, fake, _ = make(job)
    runner.step()
    runner.step()
    assert starts == [0.0, 1.0]
    with pytest.raises(AssertionError, match="forever"):
        runner.step()  # nothing more asked, no periodic run: it would sleep until a request


def test_runs_are_at_least_min_interval_apart():
    starts = []
    runner, fake, _ = make(lambda requested: starts.append(fake.now), min_interval=2.0)
    runner.step()
    fake.now = 0.5
    runner.request()
    runner.step()  # woken at 0.5: too soon, waits
    runner.step()
    assert starts == [0.0, 2.0]


def test_a_failing_run_is_logged_and_retried_after_retry_interval_and_the_job_goes_on():
    starts = []

    def job(requested):
        starts.append((fake.now, requested))
        if len(starts) == 1:
            raise RuntimeError("iptables-restore: exit 4")

    runner, fake, logs = make(job, retry_interval=0.5)
    runner.step()
    runner.step()
    assert starts == [(0.0, True), (0.5, True)]  # retried as the requested run it was
    assert logs == ["job failed: RuntimeError: iptables-restore: exit 4; again in 0.5s"]
    assert runner.failures == 1


def test_a_run_may_set_when_the_next_periodic_run_is():
    starts = []
    runner, fake, _ = make(lambda requested: starts.append(fake.now) or 3.0, max_interval=60.0)
    runner.step()
    runner.step()
    assert starts == [0.0, 3.0]


def test_gather_waits_after_a_wake_up_for_the_changes_that_come_with_it():
    starts = []
    runner, fake, _ = make(lambda requested: starts.append((fake.now, requested)), gather=0.2, max_interval=10.0)
    runner.step()
    fake.now = 4.0
    runner.request()
    runner.step()
    assert starts == [(0.0, True), (4.2, True)]


def test_a_readable_descriptor_wakes_the_job_as_a_request():
    read, write = os.pipe()
    seen = []

    def job(requested):
        seen.append((fake.now, requested))
        if readable([read]):
            os.read(read, 10)  # the job takes what woke it

    runner, fake, _ = make(job, fds=lambda: [read], max_interval=30.0)
    runner.step()
    fake.now = 7.0
    os.write(write, b"x")
    runner.step()
    assert seen == [(0.0, True), (7.0, True)]
    os.close(read)
    os.close(write)


def test_the_real_runner_answers_a_request_from_another_thread_at_once():
    done = threading.Event()
    calls = []

    def job(requested):
        calls.append(requested)
        if len(calls) == 2:
            done.set()

    runner = Runner("real", job, lambda message: None)  # no periodic run: only requests
    runner.start()
    time.sleep(0.05)
    runner.request()
    assert done.wait(5.0), "the request was not answered"
    assert calls == [True, True]


def test_the_watchdog_reports_a_run_that_lasts_with_where_it_is():
    release = threading.Event()
    entered = threading.Event()

    def stuck_in_a_subprocess(requested):
        entered.set()
        release.wait(10)

    logs = []
    runner = Runner("sync", stuck_in_a_subprocess, logs.append, stall_after=30.0)
    runner.start()
    assert entered.wait(5)
    now = [runner.running_since + 31.0]
    watchdog = Watchdog([runner], logs.append, clock=lambda: now[0])
    assert watchdog.check() == ["sync"]
    assert watchdog.check() == []  # once per stall_after
    release.set()
    assert "sync: a run has lasted 31s and goes on; it is at:" in logs[0]
    assert "stuck_in_a_subprocess" in logs[0] and "release.wait" in logs[0]
