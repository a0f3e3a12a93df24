"""`hse ui`: a web page on a Study's queue, workers, results and tuning studies.

    hse --db digits ui                      # http://127.0.0.1:8765
    hse --db digits ui --host 0.0.0.0       # prints a URL with the access token

Server-side rendered pages (Starlette + Jinja2 templates, autoescaped) that update
themselves through small JSON twins of each page (`/api/...`, polled every few seconds
while the tab is visible), with Plotly's bundled JavaScript served from the `plotly`
package: nothing is loaded from the internet. Everything is read and changed through
the `RunQueue` a notebook uses (`views` shapes what each page shows, `app` routes and
renders, `security` keeps other sites and other hosts out).

The web stack is the `ui` extra: `pip install "hyperspace_explorer[ui]"`.
"""
from __future__ import annotations

import importlib.util

from ..errors import HSEError

#: The modules the web page needs, by the PyPI package that brings them.
REQUIRED = {"starlette": "starlette", "uvicorn": "uvicorn", "jinja2": "Jinja2",
            "plotly": "plotly", "multipart": "python-multipart"}
INSTALL_HINT = 'pip install "hyperspace_explorer[ui]"'


def require_dependencies() -> None:
    """HSEError naming the missing packages and the one command that installs them,
    before anything is imported or connected."""
    missing = [package for module, package in REQUIRED.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise HSEError(f"the web page needs {', '.join(missing)}: {INSTALL_HINT}")
