"""`python -m fl_core`."""

import sys

from fl_core.cli import main

sys.exit(main())
