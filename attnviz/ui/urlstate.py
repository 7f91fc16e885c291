"""URL query parameters: read once when a session opens, rewritten as settings change.

The URL carries the model, method(s), target, method parameters and display
settings — never the image. A bad value gives one st.warning sentence and
the default.
"""
from __future__ import annotations

from typing import Any, Optional

import streamlit as st


def initial() -> dict[str, str]:
    """The query parameters this session was opened with."""
    if "_url0" not in st.session_state:
        st.session_state["_url0"] = {k: st.query_params.get(k) for k in st.query_params}
    return st.session_state["_url0"]


def consume(scope: str) -> Optional[dict[str, str]]:
    """The opening parameters, the first time ``scope`` asks in this session; None afterwards."""
    flag = f"_url_done_{scope}"
    if st.session_state.get(flag):
        return None
    st.session_state[flag] = True
    return dict(initial())


def warn(sentence: str) -> None:
    st.warning(sentence)


def sync(values: dict[str, Any]) -> None:
    """Make the address bar say ``values`` (None values dropped); no rerun."""
    new = {k: str(v) for k, v in values.items() if v is not None and v != ""}
    current = {k: st.query_params.get(k) for k in st.query_params}
    if current != new:
        st.query_params.from_dict(new)


TRUE_WORDS = ("true", "1", "yes")


def presenting() -> bool:
    """Presentation mode: the sidebar's toggle once drawn, else what the opening link says (``present=True``)."""
    if "present" in st.session_state:
        return bool(st.session_state["present"])
    return str(initial().get("present") or "").lower() in TRUE_WORDS
