"""Where a run writes: ``--home``, else ``$FLOWGMM_HOME``, else ``~/.flowgmm`` (never the working directory, which
is a temporary copy under ``ray job submit``).

    >>> import os
    >>> os.environ["FLOWGMM_HOME"] = "/tmp/flowgmm-doc-home"
    >>> str(resolve_home(None)), str(resolve_home("/srv/flowgmm"))
    ('/tmp/flowgmm-doc-home', '/srv/flowgmm')
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$FLOWGMM_HOME``, else ``~/.flowgmm``; absolute."""
    return Path(os.environ.get("FLOWGMM_HOME") or Path.home() / ".flowgmm").expanduser().resolve()


def resolve_home(arg: str | os.PathLike | None) -> Path:
    """The home given on the command line (``--home``), else :func:`default_home`."""
    return Path(arg).expanduser().resolve() if arg else default_home()
