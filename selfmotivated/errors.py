"""Expected failures, and how `sml` shows them: one line on stderr and exit status 2, no traceback
(`sml --debug ...` shows it).

Code raises `UserError` (or a subclass) where the user can fix the cause: a wrong name, a missing or
corrupt file, a run folder written by another version. Exceptions of other libraries that mean the
same thing (a file not found, a full disk, a model the hub does not have) are mapped to one line by
`user_message`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sqlite3

# Disk full (ENOSPC) and quota exceeded (EDQUOT) read the same to a user: nothing more can be written.
_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# How a full disk reads when it reaches us through another library: sqlite, safetensors (Rust's io
# error names), torch.save ("file write failed"), or an OSError wrapped in a message.
_NO_SPACE_TEXTS = ("no space left on device", "database or disk is full", "storagefull", "disk quota exceeded")


class UserError(Exception):
    """A failure the user can fix. The CLI prints its message as it is (one line, or a line and a short
    indented list), without a traceback."""


class ModelNotFoundError(UserError, OSError):
    """A model name that is no known name, no local folder, and no hub model that can be fetched now. An
    OSError too, which is what transformers raises for a model it cannot find."""


class ModelFilesError(UserError):
    """A local model or adapter folder whose files are missing or cannot be read (torn copy, wrong files)."""


class RunFolderError(UserError):
    """A run or output folder whose records this version cannot read (another version wrote them, or a
    file was edited or cut short)."""


def one_line(text: str) -> str:
    """`text` with its lines joined: messages of other libraries spread one error over several lines."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def is_out_of_space(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(err).lower()
    return any(t in text for t in _NO_SPACE_TEXTS)


def out_of_space_message(err: BaseException) -> str:
    target = getattr(err, "filename", None)
    where = f" while writing {target}" if target else ""
    folder = os.path.dirname(os.path.abspath(target)) if target else "."
    return (f"out of disk space{where} ({one_line(getattr(err, 'strerror', None) or err)}). Free some space "
            f"(`df -h {folder}` shows how much is left) and rerun the same command: what was written before "
            "is kept, and the stages resume where they stopped.")


def user_message(err: BaseException) -> str | None:
    """The one line `sml` prints for an expected failure, or None for a bug (which keeps its traceback)."""
    from .data.common import DataError  # our own ValueError of the loaders; its messages are written for users

    if is_out_of_space(err) and isinstance(err, (OSError, RuntimeError, sqlite3.Error, UserError)):
        return out_of_space_message(err)
    if isinstance(err, (UserError, DataError)):
        return str(err)
    if isinstance(err, sqlite3.DatabaseError):
        return f"database error: {one_line(err)}"
    if isinstance(err, (ValueError, OSError, RuntimeError)):
        # OSError covers files not found, permissions and network failures; ValueError and RuntimeError
        # are what our stages raise for bad settings (each names the setting).
        return one_line(err)
    try:  # safetensors raises its own type for a corrupt file
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return None
    if isinstance(err, SafetensorError):
        return f"cannot read a safetensors file: {one_line(err)}"
    return None
