"""The Streamlit app's pages and widgets: the only part of attnviz (besides app.py) that imports streamlit.

Layout: ``widgets`` draws controls and returns what they chose; ``state`` holds
process-wide cached resources (models via ``st.cache_resource``, the compute
``Engine``, samples); ``context`` builds each run's image + model + capture;
``compute`` and ``cache`` do the cached work without Streamlit; ``jobs`` runs
slow methods and checks in threads that outlive a script run; ``mapview``
gives every map its colour scale, legend and overlay; ``figures`` builds
Plotly figures; ``notes`` holds the teaching notes; ``urlstate`` reads and
writes the link's query parameters; ``panels`` holds the map panel fragment,
the overlay and figure caches and the model queue notice; ``protocol`` is a
browser's side of Streamlit's websocket for the load generator; ``pages/``
are the pages.

Environment: ``ATTNVIZ_MODEL`` (a catalog name, hub id or save_pretrained
folder) sets the default model; ``ATTNVIZ_ALLOW_CUSTOM_MODELS=1`` lets users
type a hub id; ``ATTNVIZ_CAPTURE_CACHE`` / ``ATTNVIZ_RESULT_CACHE`` /
``ATTNVIZ_OVERLAY_CACHE`` / ``ATTNVIZ_CACHE_TTL`` bound the caches (entries,
entries, entries, seconds); ``ATTNVIZ_MODEL_LANES`` how many model
computations run at once for a model that allows it (default 2) and
``ATTNVIZ_TORCH_THREADS`` the threads each uses (default: (cores - 1) /
lanes, at least 1); ``ATTNVIZ_SHOW_CLEAR=1`` shows a "Clear caches" button.
"""
