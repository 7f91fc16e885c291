"""Text helpers for the pages, below every other ui module (no Streamlit)."""
import re


def markdown_literal(text: str) -> str:
    """User text (a typed caption) for st.markdown, shown as typed: not read as Markdown or LaTeX."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)
