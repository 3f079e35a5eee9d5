"""Pausing Python's cyclic garbage collector around bulk work on the client's hot paths."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def without_gc(function: F) -> F:
    """Run `function` with the cyclic GC paused, resuming it (if it was on) afterwards.

    Submitting or receiving a batch of thousands of tasks allocates many objects and
    creates no cycles; with a heap of 100,000 live tasks the collector's passes cost up
    to a fifth of the client's time (decoding a batch of updates ran 3x faster without).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]
