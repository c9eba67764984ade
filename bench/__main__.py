"""Entry point of `python -m bench`."""

import sys

from .run import main

sys.exit(main())
