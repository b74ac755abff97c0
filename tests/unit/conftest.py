import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture()
def golden():
    """golden(name, text): text must equal tests/unit/golden/NAME; EMU_UPDATE_GOLDEN=1 rewrites it."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get("EMU_UPDATE_GOLDEN"):
            path.write_text(text)
        assert text == path.read_text(), f"differs from {path}; if intended, rerun with EMU_UPDATE_GOLDEN=1"

    return check
