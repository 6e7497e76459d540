# The two commands a newcomer needs: `make demo` and `make test`.
# Both build their own virtual environment from this repository's files only.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check
PROMPT ?= two red circles to the left of a blue square
OUT ?= out/demo.png

.PHONY: demo test venv test-venv comfy-venv clean

$(VENV)/.runtime: requirements.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(VPY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))" > $(VENV)/test-requirements.txt
	$(PIP) install -q -r $(VENV)/test-requirements.txt
	touch $@

venv: $(VENV)/.runtime
test-venv: $(VENV)/.test

demo: $(VENV)/.runtime
	$(VPY) -m uni1_core generate --prompt "$(PROMPT)" --out $(OUT) --mode sjd_coupled --seed 0

# A real ComfyUI server for tests/test_comfy_server.py (.venv-comfy; a stamp makes reruns free).
comfy-venv:
	PY=$(PY) bash scripts/comfy_env.sh

test: $(VENV)/.test comfy-venv
	$(VPY) -m pytest -q tests

clean:
	rm -rf $(VENV) .venv-comfy out .pytest_cache
