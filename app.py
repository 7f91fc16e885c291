"""attnviz: see where a vision transformer looks. Run with `make app` (streamlit run app.py).

Environment: ATTNVIZ_MODEL=<catalog name, hub id or save_pretrained folder> sets the default model;
ATTNVIZ_ALLOW_CUSTOM_MODELS=1 lets users type any hub id (safetensors only).
"""
import sys

import streamlit as st

from attnviz.ui.urlstate import presenting      # light: streamlit only (torch comes with the widgets below)

# Presentation mode (a toggle, or present=True in a link) opens with the sidebar folded: the picture gets the room.
st.set_page_config(page_title="attnviz · where does the model look?", page_icon="🔍", layout="wide",
                   initial_sidebar_state="collapsed" if presenting() else "auto")
first = st.empty()
if "attnviz.ui.widgets" not in sys.modules:      # a cold server: importing torch takes seconds; say so at once
    first.markdown("### attnviz · where does the model look?\nStarting up: loading the libraries and the model "
                   "(only the first visit to this server waits)…")

from attnviz.ui.widgets import keep_page_state, sidebar_ui  # noqa: E402

page = st.navigation([
    st.Page("attnviz/ui/pages/explore.py", title="Explore", icon=":material/visibility:", default=True),
    st.Page("attnviz/ui/pages/heads.py", title="Heads", icon=":material/grid_view:"),
    st.Page("attnviz/ui/pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("attnviz/ui/pages/prompts.py", title="Text prompts", icon=":material/text_fields:"),
    st.Page("attnviz/ui/pages/caption.py", title="Caption", icon=":material/subtitles:"),
    st.Page("attnviz/ui/pages/ask.py", title="Ask", icon=":material/question_answer:"),
    st.Page("attnviz/ui/pages/lesson.py", title="How attention works", icon=":material/school:"),
])
keep_page_state()
sidebar_ui()
first.empty()
page.run()
