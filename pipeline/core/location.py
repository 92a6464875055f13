"""Where data lives: a local path or any URI pyarrow opens (``s3://``, ``gs://``, ``file://``, ``hdfs://``...),
resolved once to its file system and path (``score.py``'s inputs and outputs, image folders).

    >>> loc = locate("/tmp")
    >>> loc.local, loc.path
    (True, '/tmp')
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pipeline.core.errors import DataError


@dataclasses.dataclass(frozen=True)
class Location:
    """A path or URI resolved by pyarrow: the file system, the path within it, and what the user wrote."""

    fs: Any
    path: str
    uri: str

    @property
    def local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)


def locate(uri: str) -> Location:
    """``pyarrow.fs.FileSystem.from_uri`` on a URI, or on the absolute form of a local path."""
    import pyarrow.fs as pafs

    target = uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))
    try:
        fs, path = pafs.FileSystem.from_uri(target)
    except Exception as e:  # noqa: BLE001  unknown scheme, missing credentials, bad bucket name...
        raise DataError(f"{uri}: not a path or URI that pyarrow can open ({type(e).__name__}: {e})") from None
    return Location(fs, path.rstrip("/") or "/", uri)
