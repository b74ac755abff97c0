"""The test tree itself: pytest collects tests/unit and tests/integration as
one rootdir, so two test modules of the same name cannot both be collected."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_unit_and_integration_test_modules_have_different_names():
    unit = {p.name for p in (TESTS / "unit").glob("test_*.py")}
    integration = {p.name for p in (TESTS / "integration").glob("test_*.py")}
    assert not unit & integration, f"rename one of each: {sorted(unit & integration)}"
