#!/usr/bin/env python
"""Thin entry point: `hyperspace_worker.py TASKS_DIR DB_NAME [--mongo-uri URI] [--interval S]`.

Run it from the Study directory (the one containing scenarios.py). The same command is
installed as `hyperspace_worker` and as `hse worker`.
"""
import sys

from hyperspace_explorer.cli.worker import main

if __name__ == "__main__":
    sys.exit(main())
