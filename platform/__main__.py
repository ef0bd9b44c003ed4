"""`python -m celltune.platform` runs the CLI."""

import sys

from celltune.platform.cli import main

sys.exit(main())
