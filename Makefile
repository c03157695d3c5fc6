# Two commands for a fresh machine with Python 3.11 and make:
#   make demo   - set up .venv and run the main job in tiny mode
#   make test   - set up .venv and run the tests and the notebooks (nbval)
#   make book   - render the executed notebooks as static HTML in book/ (nothing runs)
#   make student - regenerate the student edition in student/ (outputs cleared, self-check cells)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed

# Notebooks and tests never touch the network; progress bars stay out of outputs.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
# `make test` compares every notebook output with the committed one, and a float sum's last bits depend on the
# number of threads: the notebooks are executed and checked with the same two.
export OMP_NUM_THREADS := 2
export MKL_NUM_THREADS := 2

.PHONY: demo test venv notebooks book student clean
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cirtutor reproduce --preset tiny

test: $(STAMP)
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/ solutions/

# Re-execute every notebook in place (tiny mode) so the committed outputs are fresh.
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb

# The executed notebooks as static HTML (book/index.html), for reading without a kernel.
book: $(STAMP)
	$(BIN)/cirtutor book --out book

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The student edition: the notebooks without outputs or solutions, with the exercises' self-checks (a test keeps it current).
student: $(STAMP)
	$(BIN)/cirtutor student --out student
