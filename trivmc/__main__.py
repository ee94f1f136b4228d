"""`python -m trivmc` is the `trivmc` command."""

import sys

from trivmc.cli import main

sys.exit(main())
