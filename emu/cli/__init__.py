"""The emu command: parse, call the library, print (one module for each group of commands)."""

from __future__ import annotations

import sys

from emu.errors import EmuError, TopologyError
from emu.cli.objects import pod_phase
from emu.cli.parser import build_parser, parse_args

__all__ = ["build_parser", "main", "parse_args", "pod_phase"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _show_warning  # manifest fields emu does not model: one line each
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return args.handler(args)
    except TopologyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except EmuError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


