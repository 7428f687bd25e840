"""The project's own errors: bad input a user can fix (the CLI prints them as one line, exit code 2).

Every error the library raises about what it was given derives from `UserError`, alongside the
builtin class callers already catch (`ValueError`, `FileNotFoundError`). Anything else that escapes
is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Base of the errors caused by input (paths, configuration values, checkpoints, corpora)."""


class InputError(UserError, ValueError):
    """A value, file or option that cannot be used as given."""


class NotFound(UserError, FileNotFoundError):
    """A path the user named does not exist (or holds nothing of the expected kind)."""


class MissingDependency(UserError, ImportError):
    """An optional package a feature needs is not installed (the message says how to install it)."""


class TrainingStopped(UserError):
    """A run stopped itself (its loss stayed non-finite), its checkpoints left as they were."""


class DiskFull(UserError):
    """A write failed for lack of space on a local disk (the message names the path and the bytes)."""


def no_space(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) is ENOSPC: "No space left on device"."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
