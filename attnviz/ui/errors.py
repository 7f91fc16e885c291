"""Every failure shown as one st.error sentence; the rest of the page keeps rendering."""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import streamlit as st

from ..errors import AttnvizError
from ..images import ImageRejected

log = logging.getLogger("attnviz.ui")
T = TypeVar("T")


def sentence(exc: BaseException, what: str = "This step") -> str:
    """The one sentence a user sees for ``exc``."""
    if isinstance(exc, (AttnvizError, ImageRejected)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"{what} ran out of memory; try a smaller image or fewer samples or steps."
    return f"{what} failed unexpectedly ({type(exc).__name__}); try other settings, or reload the page."


@contextmanager
def guard(what: str = "This step") -> Iterator[None]:
    """Turn an exception inside the block into one st.error sentence.

    Streamlit's own stop/rerun signals derive from BaseException and pass through untouched.
    """
    try:
        yield
    except Exception as exc:   # noqa: BLE001  (the point: nothing reaches the user as a traceback)
        if not isinstance(exc, (AttnvizError, ImageRejected)):
            log.exception("%s failed", what)
        st.error(sentence(exc, what))


def guarded(what: str) -> Callable[[Callable[..., T]], Callable[..., T | None]]:
    """Decorator form of :func:`guard`: the function returns None when it failed."""
    def deco(fn: Callable[..., T]) -> Callable[..., T | None]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with guard(what):
                return fn(*args, **kwargs)
            return None
        return wrapper
    return deco
