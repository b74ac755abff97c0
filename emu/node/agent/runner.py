"""One loop runner for every job of the agent, as kube-proxy's BoundedFrequencyRunner.

Contract (each job is a function run by one Runner in one thread):
- The function runs in the runner's thread only, never twice at once.
- `request()`, from any thread or a signal handler, asks for a run. It starts at
  once when the last run started at least `min_interval` ago, else when that
  much time has passed; requests made while the function runs are gathered
  into one run after it. `gather` seconds after a wake-up the run starts, so a
  burst of changes (a pod wired changes its links a dozen times) is one run.
- Without a request the function runs every `max_interval` seconds (None:
  never): the periodic look that catches what no event announced. The
  function may return a number of seconds to set the next periodic run
  instead (a job whose period depends on its cost, or a timer it keeps).
- The function gets `requested`: True when a request (or a watched file
  descriptor) woke it, False for a periodic run.
- An exception is logged ("<describe()> failed: <error>; again in Ns") and the
  same run (requested or periodic) is tried again after `retry_interval`
  (never sooner than `min_interval`): one failing run never ends the job.
- `fds()` names file descriptors to wake on besides requests (pidfds,
  netlink, inotify; emu.node.agent.wake); the job reads what they hold.
- A run that lasts longer than `stall_after` is reported while it runs, with
  the stack of its thread (`Watchdog`): a job that hangs on a subprocess or a
  lock says where, instead of going silent.
- `clock` and `wait` are injected, so unit tests drive a runner without time.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable

from emu.node.agent.wake import Wake, readable

Log = Callable[[str], None]


class Runner:
    def __init__(
        self,
        name: str,
        function: Callable[[bool], float | None],
        log: Log,
        min_interval: float = 0.0,
        max_interval: float | None = None,
        retry_interval: float = 0.5,
        gather: float = 0.0,
        fds: Callable[[], list[int]] = lambda: [],
        clock: Callable[[], float] = time.monotonic,
        wake: Wake | None = None,
        stall_after: float = 120.0,
        waiter: Callable[[float | None, list[int]], list[int]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        describe: Callable[[], str] | None = None,
    ):
        self.name = name
        self.function = function
        self.log = log
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.retry_interval = retry_interval
        self.gather = gather
        self.fds = fds
        self.clock = clock
        self.wake = wake or Wake()
        self.stall_after = stall_after
        self.waiter = waiter or self.wake.wait  # (timeout, fds) -> the fds readable; returns early on a request
        self.sleep = sleep
        self.describe = describe or (lambda: name)  # what a failure's log line says was running
        self.not_before = float("-inf")  # a failed run's retry waits until then
        self.last_start = float("-inf")
        self.next_periodic = None if max_interval is None else clock()
        self.pending = True  # the first run happens at once
        self.running_since: float | None = None  # (read by the Watchdog)
        self.thread: threading.Thread | None = None
        self.runs = 0
        self.failures = 0

    def request(self) -> None:
        """Ask for a run (safe from any thread and from a signal handler)."""
        self.wake.set()

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.loop, name=self.name, daemon=True)
        self.thread.start()
        return self.thread

    def loop(self, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            self.step()

    def due_in(self) -> float | None:
        """Seconds until the next run may start, None: only on a request."""
        now = self.clock()
        earliest = max(self.last_start + self.min_interval, self.not_before)
        if self.pending:
            return max(0.0, earliest - now)
        if self.next_periodic is None:
            return None
        return max(0.0, max(earliest, self.next_periodic) - now)

    def step(self) -> None:
        """Wait until a run is due, then run once (one turn of `loop`)."""
        timeout = self.due_in()
        if timeout is None or timeout > 0:
            woke = self.waiter(timeout, self.fds())
            if woke or self._take_request():
                self.pending = True
                if self.gather:
                    self.sleep(self.gather)
                self._take_request()
            if self.due_in() != 0:
                return  # not due yet: the min interval, or a periodic run not reached (a spurious wake-up)
        requested = self.pending
        self.pending = False
        self.run_once(requested)

    def _take_request(self) -> bool:
        """Whether a request came since the last look (and take it)."""
        if not readable([self.wake.read_fd]):
            return False
        self.wake.clear()
        return True

    def run_once(self, requested: bool) -> None:
        self.last_start = self.running_since = self.clock()
        self.runs += 1
        try:
            result = self.function(requested)
        except Exception as error:  # noqa: BLE001 - one failing run must not end the job
            self.failures += 1
            self.running_since = None
            self.log(f"{self.describe()} failed: {type(error).__name__}: {error}; again in {self.retry_interval:g}s")
            # Retried as the run that failed was asked for (a sync, not a periodic look).
            self.pending, self.not_before = requested or self.pending, self.clock() + self.retry_interval
            if not self.pending:
                self.next_periodic = self.not_before
            return
        self.running_since = None
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            self.next_periodic = self.clock() + max(0.0, float(result))
        elif self.max_interval is not None:
            self.next_periodic = self.last_start + self.max_interval
        else:
            self.next_periodic = None


class Watchdog:
    """Reports runs that last longer than their runner's stall_after, once per
    run and then every stall_after, with the stack of the runner's thread."""

    def __init__(self, runners: list[Runner], log: Log, clock: Callable[[], float] = time.monotonic):
        self.runners = runners
        self.log = log
        self.clock = clock
        self.reported: dict[str, float] = {}

    def check(self) -> list[str]:
        """Names of the jobs reported now."""
        now = self.clock()
        reported = []
        frames = sys._current_frames()
        for runner in self.runners:
            since = runner.running_since
            if since is None or now - since < runner.stall_after:
                self.reported.pop(runner.name, None)
                continue
            last = self.reported.get(runner.name)
            if last is not None and now - last < runner.stall_after:
                continue
            self.reported[runner.name] = now
            frame = frames.get(runner.thread.ident) if runner.thread is not None else None
            stack = "".join(traceback.format_stack(frame)[-6:]) if frame is not None else "(no stack)\n"
            self.log(f"{runner.name}: a run has lasted {now - since:.0f}s and goes on; it is at:\n{stack.rstrip()}")
            reported.append(runner.name)
        return reported

    def loop(self, period: float = 10.0) -> None:
        while True:
            time.sleep(period)
            self.check()
