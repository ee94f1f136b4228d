"""`python -m tests.fuzz`: run the fuzz harnesses (see tests/fuzz/runner.py)."""

import sys

from .runner import main

sys.exit(main())
