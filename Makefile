# Two commands do everything on a fresh machine: `make app` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install app test models demo bench clean

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel; nothing else may pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# attnviz itself, editable: the `attnviz` command in .venv/bin (its dependencies came just above)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

app: install
	$(BIN)/python -m streamlit run app.py

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs tests

models: install
	$(BIN)/python -m attnviz.download

demo: install
	$(BIN)/python -m attnviz.demo.train

bench: install
	$(BIN)/python -m attnviz bench

clean:
	rm -rf $(VENV) .pytest_cache
