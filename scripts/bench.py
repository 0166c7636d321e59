"""Thin launcher: ``python scripts/bench.py`` is ``python -m study.bench``."""

import sys

from study.bench import main

sys.exit(main())
