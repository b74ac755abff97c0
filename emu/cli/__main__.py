"""python -m emu.cli: the emu command."""

import sys

from emu.cli import main

sys.exit(main())
