"""bench/harness.py: the timing, the side-by-side rows and the options every bench script shares."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

# Loaded from its file: putting bench/ on sys.path would let its scripts (trace.py,
# dns.py, testing.py) shadow modules of those names for the rest of the session.
_spec = importlib.util.spec_from_file_location(
    "bench_harness", Path(__file__).resolve().parents[2] / "bench" / "harness.py"
)
harness = sys.modules["bench_harness"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(harness)


def test_measure_runs_the_warmup_untimed_then_the_runs():
    calls = []
    timing = harness.measure(lambda: calls.append(1), runs=4, warmup=2)
    assert len(calls) == 6 and len(timing.samples) == 4
    assert all(sample >= 0 for sample in timing.samples)


def test_alternate_interleaves_the_two_sides_and_keeps_what_each_returns():
    calls = []

    def side(name, value):
        return lambda: (calls.append(name), value)[1]

    emu, baseline, other = harness.alternate(side("emu", 2.0), side("base", 1), side("other", 3), runs=2, warmup=1)
    assert calls == ["emu", "base", "other"] * 3
    assert emu.samples == [2.0, 2.0] and baseline.samples == [1.0, 1.0] and other.samples == [3.0, 3.0]
    assert harness.rounds(side("emu", {"a": 1}), side("base", "b"), runs=1) == ([{"a": 1}], ["b"])


def test_timing_gives_median_min_max_of_its_samples():
    timing = harness.Timing([0.3, 0.1, 0.2, 0.9])
    assert (timing.median, timing.min, timing.max) == (0.25, 0.1, 0.9)
    assert harness.Timing.of(timing.as_dict()).samples == [0.3, 0.1, 0.2, 0.9]
    assert harness.Timing.of(2).samples == [2.0]


def test_a_row_beside_its_baseline_carries_the_ratio_and_prints_in_the_table():
    out = io.StringIO()
    report = harness.Report(out=out)
    row = report.compare("sync", [0.2, 0.4, 0.3], [0.1, 0.1], "ms")
    alone = report.figure("render", [0.05])
    assert row.ratio == pytest.approx(3.0) and alone.ratio is None
    text = out.getvalue()
    assert "300.0 ms" in text and "100.0 ms" in text and "3.00x" in text


def scenarios(seen: list):
    def run(name):
        return lambda context: seen.append((name, context.runs, context.warmup, context.options.extra))

    return [harness.Scenario("a", "A", "base A", run("a")), harness.Scenario("b", "B", "base B", run("b")),
            harness.Scenario("c", "C", "base C", run("c"), default=False)]  # fmt: skip


def test_main_parses_the_shared_options_and_runs_the_default_scenarios():
    seen: list = []
    with redirect_stdout(io.StringIO()):
        harness.main(scenarios(seen), runs=3, options=lambda p: p.add_argument("--extra", default="x"), argv=[])
    assert seen == [("a", 3, 0, "x"), ("b", 3, 0, "x")]
    seen.clear()
    with redirect_stdout(io.StringIO()):
        harness.main(
            scenarios(seen), options=lambda p: p.add_argument("--extra"), argv=["--rounds", "7", "--only", "c"]
        )
    assert seen == [("c", 7, 0, None)]


def test_main_refuses_an_unknown_scenario_naming_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        harness.main(scenarios([]), options=lambda p: p.add_argument("--extra"), argv=["--only", "zz"])
    assert "no scenario zz; there are a, b, c" in capsys.readouterr().err


def test_json_output_holds_every_row_with_its_samples(capsys):
    def run(context):
        context.report.compare("x", [1.0, 3.0], [1.0])

    harness.main([harness.Scenario("s", "S", "B", run)], argv=["--json", "--runs", "2"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["options"]["runs"] == 2
    [row] = document["rows"]
    assert row["emu"]["samples"] == [1.0, 3.0] and row["baseline"]["median"] == 1.0 and row["ratio"] == 2.0
    assert "ratio" in captured.err  # the table went to stderr
