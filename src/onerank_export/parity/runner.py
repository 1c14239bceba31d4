"""One runner interface for every backend (Polygraphy-style).

    with SomeRunner(...) as runner:          # activate() / deactivate()
        outputs = runner.infer(feed)         # {input name: np.ndarray} -> {output name: np.ndarray}

`infer` returns arrays the caller owns (a parity run keeps them to compare later), never views of
buffers the next call reuses. Subclasses fill `activate_impl`, `infer_impl` and optionally
`deactivate_impl`. A backend that cannot run on this machine raises `RunnerUnavailable(reason)`
from `activate_impl`; callers record that as `skipped: <reason>`, never as passed.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from types import TracebackType

import numpy as np


class RunnerUnavailable(Exception):
    """The backend cannot run here (no GPU, library missing); the message is the reason."""


class Runner(abc.ABC):
    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} must be activated before infer()")
        return self.infer_impl(feed)

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        pass
