# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= input/synth
STUDIES ?= 200
TEST_STUDIES ?= 40
IMAGE_SIZE ?= 256
SEED ?= 0
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test data folds baselines prepare train clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# The synthetic RSNA-format dataset (the embedded default); regenerated only when missing.
$(DATA)/synth_config.json: | $(VENV)/.installed
	$(PY) -m src.synth --out $(DATA) --studies $(STUDIES) --test-studies $(TEST_STUDIES) --image-size $(IMAGE_SIZE) --seed $(SEED)

data: $(DATA)/synth_config.json

folds: data
	$(PY) make_folds.py --data-dir $(DATA) --n-folds 5 --seed 42 --out folds/folds.csv

baselines: data
	$(PY) score.py --solution $(DATA)/test_solution.csv --prior $(DATA)/train.csv
	$(PY) score.py --solution $(DATA)/test_solution.csv --submission $(DATA)/test_oracle.csv

PRESET ?= tiny
FOLD ?= 0

prepare: data
	$(PY) prepare.py --data-dir $(DATA)

train: prepare folds
	$(PY) train.py --fold $(FOLD) --model attn_resnext --preset $(PRESET) --data-dir $(DATA)
	$(PY) train.py --fold $(FOLD) --model cnn_lstm --preset $(PRESET) --data-dir $(DATA)

demo: install data folds baselines train

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DATA) folds/folds.csv runs reports
