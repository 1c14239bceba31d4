"""User-facing errors.

Every error a user can cause (bad checkpoint, bad request, bad option) is raised as a
subclass of `OneRankError` with a single-line message that names the problem and the
fix. The CLI prints it as one line and exits 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class OneRankError(Exception):
    """Base class: a one-line, user-facing message."""

    def __init__(self, message: str) -> None:
        # One line, always: a newline would break CI log parsing and the CLI contract.
        super().__init__(" ".join(str(message).split()))


class ConfigError(OneRankError):
    """config.json (or a config override) is invalid."""


class CheckpointError(OneRankError):
    """A checkpoint directory, its config or its weights are missing or inconsistent."""


class RequestError(OneRankError):
    """A request does not follow the serving contract (names, dtypes, shapes, id ranges)."""


class DataError(OneRankError):
    """Calibration / evaluation data files are unreadable or invalid."""


class StageError(OneRankError):
    """A pipeline stage could not run (missing tool, failed build)."""


class ServiceUnavailable(OneRankError):
    """A service the answer depends on (the Redis embedding backend) cannot answer, or lacks data it should
    hold; the request may succeed later. Triton answers UNAVAILABLE, not INVALID_ARGUMENT."""


class CheckFailed(OneRankError):
    """A gate (parity, accuracy) failed; the report says by how much."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception text (at most 300 characters), for a one-line error;
    the exception's type when it has no text."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
