"""`python -m wsp_cirrhosis` runs the command-line interface."""

import sys

from .cli import main

sys.exit(main())
