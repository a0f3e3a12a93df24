"""`python -m hyperspace_explorer.cli`: the `hse` command."""
import sys

from . import main

sys.exit(main())
