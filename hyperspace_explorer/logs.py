"""Log files of the package's processes (runs, workers, the embedded server): their tail
in messages, and bounded size on disk."""
from __future__ import annotations

import os
from pathlib import Path

_CUT_NOTE = "[hyperspace_explorer: output longer than {} {}; only its tail is kept]\n"


def cut_note(limit: int, unit: str = "characters") -> str:
    """The line that starts an output of which only the tail is kept."""
    return _CUT_NOTE.format(limit, unit)


def tail(path: str | os.PathLike[str], max_bytes: int = 2000, offset: int = 0) -> str:
    """The last `max_bytes` of a file (from `offset` on at most), decoded leniently and
    stripped; "" when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(offset, f.tell() - max_bytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def trim(path: str | os.PathLike[str], limit: int) -> None:
    """Keep only the last `limit` bytes of a file that is no longer written, with a note."""
    try:
        if os.path.getsize(path) <= limit:
            return
        kept = Path(path).read_bytes()[-limit:]
        with open(path, "wb") as f:
            f.write(cut_note(limit, "bytes").encode())
            f.write(kept)
    except OSError:
        pass  # a log is a convenience: the Sacred record keeps the output's tail
