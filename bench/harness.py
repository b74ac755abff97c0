"""The one harness every bench script uses: timing, the baseline side by side, one table.

A bench script is a list of `Scenario`s and a call to `main(scenarios, ...)`:

    python bench/NAME.py [--runs N] [--warmup N] [--json] [--only A,B] [its own options]

- The repository root is put on sys.path here, once (importing this module is
  enough for `import emu`).
- `measure(fn, runs, warmup)` times a callable with time.perf_counter: warm-up
  calls first (not kept), then `runs` timed calls; a `Timing` holds the samples
  and gives median, min and max.
- `rounds(emu, baseline, ..., runs=N, warmup=N)` calls callables in turn,
  round after round (so the machine's load falls on each alike), and keeps
  what each returns: a list each; `alternate(...)` the same for callables that
  return one sample (a time they measured themselves, a throughput, a memory
  size): a `Timing` each.
- `Report.compare(figure, emu, baseline)` records one figure beside the
  baseline measured in the same run, with their ratio (emu median / baseline
  median); `Report.figure(...)` one without a baseline; `Report.note(...)` a line
  of context. Every row prints in the same table format as it comes; `--json`
  prints every row (with its samples) as one JSON document on stdout at the end
  and the table on stderr.

Standard library only: the scripts that run inside a node (node_*.py, copied
there with this file) use `measure` and `Timing` too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Units whose values are seconds, shown scaled; any other unit is shown as given.
TIME_UNITS = {"s": 1.0, "ms": 1000.0, "us": 1e6}


@dataclass
class Timing:
    """The samples of one figure (seconds for times, or the figure's own unit)."""

    samples: list[float]

    @classmethod
    def of(cls, value: Timing | Iterable[float] | float | dict) -> Timing:
        """A Timing from a Timing, a list of samples, one number or `as_dict()`'s output."""
        if isinstance(value, Timing):
            return value
        if isinstance(value, dict):
            return cls(list(value["samples"]))
        if isinstance(value, (int, float)):
            return cls([float(value)])
        return cls([float(v) for v in value])

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "samples": self.samples}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of fn takes (time.perf_counter)."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(fn: Callable[[], Any], runs: int, warmup: int = 0) -> Timing:
    """`warmup` untimed calls of fn, then `runs` timed ones."""
    for _ in range(warmup):
        fn()
    return Timing([timed(fn) for _ in range(runs)])


def rounds(*sides: Callable[[], Any], runs: int, warmup: int = 0) -> tuple[list, ...]:
    """`warmup` rounds, not kept, then `runs` rounds that call each side in turn
    (emu, then its baseline or baselines): what each call returned, a list a side.

    For sides that must interleave so that the machine's load falls on all alike,
    and whose calls measure themselves (a time, a throughput, a memory size, or
    a record of several figures)."""
    for _ in range(warmup):
        for side in sides:
            side()
    kept: list[list] = [[] for _ in sides]
    for _ in range(runs):
        for side, values in zip(sides, kept):
            values.append(side())
    return tuple(kept)


def alternate(*sides: Callable[[], Any], runs: int, warmup: int = 0) -> tuple[Timing, ...]:
    """`rounds` of sides that each return one sample (wrap a side in `timed` to time
    it): a Timing a side."""
    return tuple(Timing.of(values) for values in rounds(*sides, runs=runs, warmup=warmup))


@dataclass
class Row:
    """One figure of a scenario, maybe beside its baseline."""

    scenario: str
    figure: str
    unit: str
    emu: Timing
    baseline: Timing | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.median:
            return None
        return self.emu.median / self.baseline.median

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "figure": self.figure, "unit": self.unit, "emu": self.emu.as_dict(),
                "baseline": self.baseline.as_dict() if self.baseline else None, "ratio": self.ratio,
                "note": self.note}  # fmt: skip


def _value(value: float, unit: str) -> str:
    if value != value:  # NaN: the figure could not be read
        return "-"
    shown = value * TIME_UNITS.get(unit, 1.0)
    if unit not in TIME_UNITS and shown == int(shown):  # a count: no decimals
        return f"{int(shown):,} {unit}"
    if unit == "x":
        return f"{shown:.2f}x"
    digits = 3 if abs(shown) < 10 else 2 if abs(shown) < 100 else 1 if abs(shown) < 1000 else 0
    return f"{shown:,.{digits}f} {unit}"


HEADER = (f"{'figure':40} {'n':>3} {'median':>13} {'min':>13} {'max':>13} | {'baseline':>13} {'min':>13} "
          f"{'max':>13} | {'ratio':>7}")  # fmt: skip


class Report:
    """Collects a run's rows and prints each one in the shared table format as it comes."""

    def __init__(self, json_output: bool = False, out=None):
        self.rows: list[Row] = []
        self.notes: list[dict] = []
        self.json_output = json_output
        self.out = out or (sys.stderr if json_output else sys.stdout)
        self.scenario = ""

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def begin(self, scenario: Scenario) -> None:
        self.scenario = scenario.name
        self.print(f"\n== {scenario.name}: {scenario.summary}")
        self.print(f"   baseline: {scenario.baseline}")
        self.print(HEADER)

    def compare(self, figure: str, emu, baseline, unit: str = "s", note: str = "") -> Row:
        """One figure beside its baseline from the same run; ratio = emu median / baseline median."""
        return self._add(Row(self.scenario, figure, unit, Timing.of(emu), Timing.of(baseline), note))

    def figure(self, figure: str, value, unit: str = "s", note: str = "") -> Row:
        """A figure without a baseline of its own (a part of another, a cost, a count)."""
        return self._add(Row(self.scenario, figure, unit, Timing.of(value), None, note))

    def note(self, text: str, **data: Any) -> None:
        """A line of context (what was set up, runs one by one, a check's outcome)."""
        self.notes.append({"scenario": self.scenario, "text": text, **data})
        self.print(f"   {text}")

    def _add(self, row: Row) -> Row:
        self.rows.append(row)
        e, b = row.emu, row.baseline
        base = [_value(b.median, row.unit), _value(b.min, row.unit), _value(b.max, row.unit)] if b else ["-"] * 3
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        self.print(f"{row.figure:40} {len(e.samples):>3} {_value(e.median, row.unit):>13} {_value(e.min, row.unit):>13} "
                   f"{_value(e.max, row.unit):>13} | {base[0]:>13} {base[1]:>13} {base[2]:>13} | {ratio:>7}")  # fmt: skip
        if row.note:
            self.print(f"   {row.note}")
        return row

    def as_dict(self, options: argparse.Namespace) -> dict:
        return {"options": {k: v for k, v in vars(options).items() if k != "json"},
                "rows": [r.as_dict() for r in self.rows], "notes": self.notes}  # fmt: skip


@dataclass
class Context:
    """What a scenario's run gets: the parsed options, the report, and an ExitStack
    closed after every scenario ran (for a lab that several scenarios share)."""

    options: argparse.Namespace
    report: Report
    stack: contextlib.ExitStack
    shared: dict = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return self.options.runs

    @property
    def warmup(self) -> int:
        return self.options.warmup

    def measure(self, fn: Callable[[], Any], runs: int | None = None) -> Timing:
        return measure(fn, self.runs if runs is None else runs, self.warmup)

    def rounds(self, *sides: Callable[[], Any], runs: int | None = None) -> tuple[list, ...]:
        return rounds(*sides, runs=self.runs if runs is None else runs, warmup=self.warmup)

    def alternate(self, *sides: Callable[[], Any], runs: int | None = None) -> tuple[Timing, ...]:
        return alternate(*sides, runs=self.runs if runs is None else runs, warmup=self.warmup)


@dataclass
class Scenario:
    """One thing measured: `run(context)` adds its rows to context.report."""

    name: str
    summary: str  # what is measured, one line
    baseline: str  # what it is measured against in the same run, one line
    run: Callable[[Context], Any]
    default: bool = True  # run when --only is not given


def main(
    scenarios: list[Scenario],
    doc: str | None = None,
    *,
    runs: int = 3,
    warmup: int = 0,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    rounds_alias: bool = True,
    only_default: str | None = None,
    argv: list[str] | None = None,
) -> int:
    """Parse the shared options (and the script's own, from `options`), run the
    chosen scenarios, print the table (or JSON). Returns the exit status."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ["--runs", "--rounds"] if rounds_alias else ["--runs"]
    parser.add_argument(*names, dest="runs", type=int, default=runs,
                        help=f"timed runs of each figure, medians shown (default {runs})")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs first (default {warmup})")
    parser.add_argument("--json", action="store_true", help="print every row and its samples as JSON on stdout")
    if len(scenarios) > 1:
        default = only_default or ",".join(s.name for s in scenarios if s.default)
        parser.add_argument("--only", default=default,
                            help=f"comma-separated scenarios of {', '.join(s.name for s in scenarios)} "
                                 f"(default {default})")  # fmt: skip
    if options:
        options(parser)
    parsed = parser.parse_args(argv)
    if parsed.runs < 1:
        parser.error("--runs must be at least 1")
    chosen = scenarios
    if len(scenarios) > 1:
        wanted = [n for n in parsed.only.split(",") if n]
        known = {s.name: s for s in scenarios}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            parser.error(f"--only: no scenario {', '.join(unknown)}; there are {', '.join(known)}")
        chosen = [known[n] for n in wanted]
    report = Report(parsed.json)
    with contextlib.ExitStack() as stack:
        context = Context(parsed, report, stack)
        for scenario in chosen:
            report.begin(scenario)
            scenario.run(context)
    if parsed.json:
        print(json.dumps(report.as_dict(parsed), indent=1))
    return 0
