"""The question (and optional answer to check) a vision-language model is asked: widgets only.

Suggested questions come from the checkpoint (``config.attnviz_demo["example_questions"]``, as the demo
models name their example prompts), else a few generic ones. Returns the texts the capture is keyed by:
``(question,)`` or ``(question, answer)``.
"""
from __future__ import annotations

from typing import Optional

import streamlit as st

from ..errors import UsageError

GENERIC_QUESTIONS = ("What is in the picture?", "What colour is the largest object?", "How many objects are there?")


def suggested_questions(adapter) -> tuple[str, ...]:
    demo = getattr(getattr(adapter.model, "config", None), "attnviz_demo", None)
    found = demo.get("example_questions") if isinstance(demo, dict) else None
    if found and all(isinstance(q, str) and q.strip() for q in found):
        return tuple(found)
    return GENERIC_QUESTIONS


def _use_suggestion() -> None:
    picked = st.session_state.get("ask_suggestion")
    if picked:
        st.session_state["ask_question"] = picked


def question_ui(adapter, box=None) -> Optional[tuple[str, ...]]:
    box = box if box is not None else st.sidebar
    suggestions = suggested_questions(adapter)
    ss = st.session_state
    # Set every run (the box is a different widget on each page, which would otherwise start empty): the
    # user's current text, else the last one asked, else the first suggestion.
    ss["ask_question"] = ss.get("ask_question") or ss.get("_ask_question") or suggestions[0]
    if ss.get("ask_answer") is None:
        ss["ask_answer"] = ss.get("_ask_answer", "")
    box.pills("Suggested questions", list(suggestions), key="ask_suggestion", on_change=_use_suggestion,
              help="Click one to ask it.")
    question = box.text_input("Question", key="ask_question", help="What to ask the model about the image.")
    answer = box.text_input("Answer to check (optional)", key="ask_answer",
                            help="Empty: the model answers (greedily). Typed: the model scores your answer, "
                                 "word by word.")
    ss["_ask_question"], ss["_ask_answer"] = question, answer
    if not question.strip():
        raise UsageError("Type a question about the image.")
    return (question.strip(), answer.strip()) if answer.strip() else (question.strip(),)
