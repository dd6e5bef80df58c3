# Two commands: `make demo` and `make test`. Both install into a local .venv first. (And, while you
# work, `make quick`: the tests without the slow ones.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test quick docs lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# The main job: `vitkit train` with no arguments (scikit-learn's digits), then eval and predict
# on its result. Predict reads a few held-out digits written as PNG files.
demo: $(VENV)/.installed
	$(BIN)/vitkit train
	$(BIN)/vitkit eval $$(ls -td runs/digits-* | head -1)
	$(BIN)/python -c "from vitkit.data.arrays import digits; from PIL import Image; import pathlib; \
	(_, (x, y), _) = digits(); d = pathlib.Path('runs/demo-images'); d.mkdir(parents=True, exist_ok=True); \
	[Image.fromarray(x[i, 0].numpy()).resize((64, 64)).save(d / f'digit{i}-is-{int(y[i])}.png') for i in range(5)]"
	$(BIN)/vitkit predict $$(ls -td runs/digits-* | head -1) runs/demo-images --topk 3

# Every test, the slow ones included, and the documentation site: what must pass before a commit.
test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
	$(MAKE) docs

# For a quick check while you work: every test but those marked slow (torchrun, processes killed and
# resumed, gpu.sh, long end-to-end runs: ~10 s or more each), minutes sooner. Not a
# substitute for `make test`, which runs them all.
quick: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# The documentation site (site/), built strictly: a broken link, anchor or API reference fails it.
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) runs site
