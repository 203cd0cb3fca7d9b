"""Writing files so that an interrupted run never leaves a half-written one, and naming
them by content."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import InputError

# the causes that more room fixes
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temporary file beside `path`, then rename it to `path`:
    readers see either the old file or the complete new one, never a part. If write
    raises, the temporary file is removed. The file is made readable by everyone (0644),
    like any other file the user creates: temporary files start private."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
    ) as f:
        try:
            write(f)
            f.flush()  # a full disk shows here, not after the rename
        except BaseException:
            with contextlib.suppress(OSError):  # (close flushes again, and fails again)
                f.close()
            os.unlink(f.name)
            raise
    try:
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)
    except BaseException:
        os.unlink(f.name)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex, read a few MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(text: str) -> str:
    """16 hex digits of the SHA-256 of `text`: a file name that changes when the text
    does."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cannot_write(
    path: str | os.PathLike, error: OSError, elsewhere: str = "choose another --out_dir"
) -> InputError:
    """The one line for an OSError met while writing `path`: the file the system names
    (or `path`), the cause and what to do, e.g. `cannot write runs/x/checkpoint.tmp: No
    space left on device (errno 28): free space, or choose another --out_dir`."""
    cause = f"{error.strerror} (errno {error.errno})" if error.strerror else str(error)
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        cause += ", a file where a folder is needed"
    remedy = f"free space, or {elsewhere}" if error.errno in OUT_OF_SPACE else elsewhere
    return InputError(f"cannot write {error.filename or path}: {cause}: {remedy}")
