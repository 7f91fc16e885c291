"""attnviz: see where a vision transformer looks. Run with `make app` (streamlit run app.py).

Environment: ATTNVIZ_MODEL=<catalog name, hub id or save_pretrained folder> sets the default model;
ATTNVIZ_ALLOW_CUSTOM_MODELS=1 lets users type any hub id (safetensors only).
"""
import streamlit as st

from attnviz.ui.widgets import keep_page_state, sidebar_ui

st.set_page_config(page_title="attnviz · where does the model look?", page_icon="🔍", layout="wide")
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
page.run()
