# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= input/synth
STUDIES ?= 200
TEST_STUDIES ?= 40
IMAGE_SIZE ?= 256
SEED ?= 0
VARIETY ?= default
# Each dataset's outputs go to folders of its own, named after its data folder (as the scripts' defaults do):
# runs/<dataset>, folds/<dataset>/folds.csv, submission/<dataset>, reports/<dataset>.
# The dataset's folders (runs, folds file, submissions, reports) as src/core/paths.py names them (stdlib only).
DATASET_DIRS := $(shell $(PYTHON) -m src.core.paths $(DATA))
RUNS ?= $(word 1,$(DATASET_DIRS))
FOLDS_FILE ?= $(word 2,$(DATASET_DIRS))
SUBMISSIONS ?= $(word 3,$(DATASET_DIRS))
REPORTS ?= $(word 4,$(DATASET_DIRS))
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test data folds baselines clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# The synthetic RSNA-format dataset (the embedded default); regenerated only when missing.
$(DATA)/synth_config.json: | $(VENV)/.installed
	$(PY) -m src.synth --out $(DATA) --studies $(STUDIES) --test-studies $(TEST_STUDIES) --image-size $(IMAGE_SIZE) --seed $(SEED) --variety $(VARIETY)

data: $(DATA)/synth_config.json

folds: data
	$(PY) make_folds.py --data-dir $(DATA) --n-folds 5 --seed 42 --out $(FOLDS_FILE)

baselines: data
	$(PY) score.py --solution $(DATA)/test_solution.csv --prior $(DATA)/train.csv
	$(PY) score.py --solution $(DATA)/test_solution.csv --submission $(DATA)/test_oracle.csv

# One recipe (configs/*.yaml) on any competition-format folder: folds when the folds file is missing, the
# series cache, every model of the recipe (its `pipeline`) for each listed fold (train.py --pipeline), each
# fold's localization report (which writes every classifier fold's oof_predicted.csv: crops at its fold's
# predicted points), the final stage the recipe asks for (`ensemble:`, validated by nested folds against the
# plain mean), infer.py on the test split, the out-of-fold reports and, where DATA holds the answers
# (test_solution.csv, test_label_coordinates.csv, as the generator writes them), the held-out tables: the steps
# after the trainings in one process (run_steps.py: torch and timm imported once). It never generates data.
CONFIG ?= configs/demo.yaml
FOLD_IDS ?= 0
# CACHE_DIR= moves the decoded-series cache (default: input/cache/<dataset>-<path hash>).
CACHE_FLAG = $(if $(CACHE_DIR),--cache-dir $(CACHE_DIR))
# TRAIN_JOBS= trainings of a fold at once (train.py --jobs; auto: 2 on a CPU device of 2 or more cores, else 1).
TRAIN_JOBS ?= auto
# PRETRAINED= passes backbone weights to every model (true: timm's, through the Hugging Face cache; a folder
# from `make weights`); default: the recipe's `pretrained`.
PRETRAINED_FLAG = $(if $(PRETRAINED),--pretrained $(PRETRAINED))
.PHONY: pipeline
pipeline: install
	@test -f $(DATA)/train.csv || { echo "make pipeline: $(DATA)/train.csv not found: DATA= must be a competition-format folder"; exit 2; }
	@test -f $(CONFIG) || { echo "make pipeline: recipe $(CONFIG) not found (CONFIG=configs/....yaml)"; exit 2; }
	test -f $(FOLDS_FILE) || $(PY) make_folds.py --data-dir $(DATA) --n-folds 5 --seed 42 --out $(FOLDS_FILE)
	$(PY) prepare.py --data-dir $(DATA) $(CACHE_FLAG)
	set -e; for f in $(FOLD_IDS); do \
	  $(PY) train.py --pipeline --jobs $(TRAIN_JOBS) --fold $$f --config $(CONFIG) --data-dir $(DATA) --folds $(FOLDS_FILE) \
	    --runs $(RUNS) $(if $(CACHE_DIR),--cache_dir $(CACHE_DIR)) $(PRETRAINED_FLAG); \
	done
	$(PY) run_steps.py \
	  evaluate_localization.py --runs $(RUNS) --data-dir $(DATA) --folds $(FOLDS_FILE) --fold-ids $(FOLD_IDS) \
	    --out $(REPORTS)/localization.json $(CACHE_FLAG) \
	  --then ensemble.py --runs $(RUNS) --data-dir $(DATA) --config $(CONFIG) \
	  --then infer.py --data-dir $(DATA) --runs $(RUNS) --out $(SUBMISSIONS)/submission.csv --per-model --strict $(CACHE_FLAG) \
	  $$(test -f $(DATA)/test_label_coordinates.csv && echo --then evaluate_localization.py --split test --runs $(RUNS) \
	    --data-dir $(DATA) --out $(REPORTS)/localization_test.json --coords $(SUBMISSIONS)/submission.coordinates.csv $(CACHE_FLAG)) \
	  --then evaluate.py --runs $(RUNS) --data-dir $(DATA) --folds $(FOLDS_FILE) --out-dir $(REPORTS) \
	    $$(test -f $(DATA)/test_solution.csv && echo --submissions $(SUBMISSIONS))

# Every pretrained backbone a recipe uses, saved as WEIGHTS/<backbone>.pth (needs internet once, or the Hugging
# Face cache): give the folder to an offline training box and set `pretrained: WEIGHTS` (or PRETRAINED=WEIGHTS).
WEIGHTS ?= weights
.PHONY: weights
weights: install
	$(PY) fetch_weights.py --config $(CONFIG) --out $(WEIGHTS)

# The CPU demo: the default synthetic set and configs/demo.yaml (tiny models, fold 0, trimmed localizers).
# `make demo FULL=1`: the full-size models of configs/real.yaml instead (for a GPU machine).
ifeq ($(FULL),1)
DEMO_CONFIG := configs/real.yaml
else
DEMO_CONFIG := configs/demo.yaml
endif
demo: install data baselines
	$(MAKE) pipeline DATA=$(DATA) CONFIG=$(DEMO_CONFIG) FOLD_IDS=0

# The acquisition-variety protocol (docs/BENCHMARKS.md): after `make demo`, score its runs on the test split
# of a dataset generated with `--variety real` (cross), then train and score on that dataset with
# configs/variety.yaml (variety-demo, into runs/synth_real and the other folders of that dataset).
VARIETY_DATA ?= input/synth_real
.PHONY: variety-cross variety-demo
variety-cross: install
	$(MAKE) data DATA=$(VARIETY_DATA) VARIETY=real
	$(PY) infer.py --data-dir $(VARIETY_DATA) --runs $(RUNS) --out $(SUBMISSIONS)/cross/submission.csv --per-model
	$(PY) evaluate.py --held-out-only --data-dir $(VARIETY_DATA) --submissions $(SUBMISSIONS)/cross --out-dir $(REPORTS)/cross
	$(PY) evaluate_localization.py --split test --runs $(RUNS) --data-dir $(VARIETY_DATA) --out $(REPORTS)/cross/localization_test.json \
	  --coords $(SUBMISSIONS)/cross/submission.coordinates.csv
variety-demo: install
	$(MAKE) data baselines DATA=$(VARIETY_DATA) VARIETY=real
	$(MAKE) pipeline DATA=$(VARIETY_DATA) CONFIG=configs/variety.yaml FOLD_IDS=0

# Decisions on enough data (issue 31): the variety recipe on one --variety real set per seed (200 training and
# VARIETY_TEST held-out studies each, input/synth_real_s<seed>), then their held-out tables side by side:
# mean and spread of every score part (reports/variety_seeds/across.csv). On 2 cores, a seed's two 20-epoch
# classifiers (at once) and its reports take about 8 minutes (docs/BENCHMARKS.md); its data and localizers,
# not timed alone at this head, come before them.
SEEDS ?= 1 2
VARIETY_TEST ?= 100
.PHONY: variety-seeds
variety-seeds: install
	set -e; for s in $(SEEDS); do \
	  $(MAKE) data baselines DATA=input/synth_real_s$$s VARIETY=real SEED=$$s TEST_STUDIES=$(VARIETY_TEST); \
	  $(MAKE) pipeline DATA=input/synth_real_s$$s CONFIG=configs/variety.yaml FOLD_IDS=0; \
	done
	$(PY) evaluate.py --across $(foreach s,$(SEEDS),$(word 4,$(shell $(PYTHON) -m src.core.paths input/synth_real_s$(s)))) \
	  --out-dir reports/variety_seeds

# One prepared GPU check (under 8 minutes on one GPU; exits at once without one): full-size AMP samples/s and
# peak memory per model, inference s/study, and a 2-epoch full-size training of each model (gpu_check.py).
.PHONY: gpu-check
gpu-check: install
	$(PY) gpu_check.py

# Lint (ruff), the layers of src/ (import-linter; both set in pyproject.toml), then the suite.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DATA) $(FOLDS_FILE) $(RUNS) $(REPORTS)

# ---- Kaggle (kaggle-wheels and kaggle-dataset need no credentials; the others need the kaggle CLI's:
# kaggle.json in $KAGGLE_CONFIG_DIR or ~/.kaggle, or KAGGLE_USERNAME and KAGGLE_KEY) ----
COMPETITION := rsna-2024-lumbar-spine-degenerative-classification
REAL_DATA ?= input/$(COMPETITION)
KAGGLE ?= $(VENV)/bin/kaggle
BUILD ?= build

.PHONY: kaggle-check kaggle-download kaggle-wheels kaggle-dataset kaggle-upload kaggle-push kaggle-status kaggle-submit

kaggle-check: install
	@$(PY) kaggle/meta.py check

# The competition's rules must be accepted on its Kaggle page first (else the CLI answers 403). The zip is checked
# against the free disk before unpacking, and removed once unpacked (KEEP_ZIP=1 keeps it): docs/GUIDE.md, "Kaggle".
kaggle-download: kaggle-check
	$(KAGGLE) competitions download -c $(COMPETITION) -p input/
	$(PY) kaggle/meta.py unzip-check input/$(COMPETITION).zip $(REAL_DATA)
	cd input && unzip -q -o $(COMPETITION).zip -d $(COMPETITION)
	$(if $(KEEP_ZIP),,rm -f input/$(COMPETITION).zip)

# Wheels the offline notebook installs when the image lacks them (or has an older version than src/ needs):
# built for the Python of Kaggle's current image. Change these two together when Kaggle moves to another
# Python (e.g. KAGGLE_PYTHON=3.13 KAGGLE_ABI=cp313). The metadata keeps its user-name placeholder until
# kaggle-upload fills it.
KAGGLE_PYTHON ?= 3.12
KAGGLE_ABI ?= cp312
KAGGLE_PLATFORMS := --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
kaggle-wheels: install
	rm -rf $(BUILD)/wheels && mkdir -p $(BUILD)/wheels
	$(VENV)/bin/pip download --no-deps --only-binary=:all: --python-version $(KAGGLE_PYTHON) --implementation cp \
	  --abi $(KAGGLE_ABI) --abi abi3 --abi none $(KAGGLE_PLATFORMS) -d $(BUILD)/wheels -r kaggle/requirements-kaggle.txt
	cp kaggle/wheels-metadata.json $(BUILD)/wheels/dataset-metadata.json
# Code and weights as one dataset: the inference scripts, only the src/ modules they import, the package
# minimums the notebook checks, and each run's config.yaml + best.pt + ensemble.json.
kaggle-dataset: install
	rm -rf $(BUILD)/kaggle_dataset
	$(PY) kaggle/meta.py package --runs runs/$(notdir $(REAL_DATA)) --dataset $(notdir $(REAL_DATA)) $(BUILD)/kaggle_dataset
	cp kaggle/dataset-metadata.json $(BUILD)/kaggle_dataset/dataset-metadata.json

# Each dataset is created, or versioned when Kaggle has it already (kaggle/meta.py upload asks first, and reads
# the CLI's output: kaggle 1.7 exits 0 after a refused creation); any upload error stops make with one line.
kaggle-upload: kaggle-check kaggle-wheels kaggle-dataset
	$(PY) kaggle/meta.py fill kaggle/wheels-metadata.json $(BUILD)/wheels/dataset-metadata.json
	$(PY) kaggle/meta.py fill kaggle/dataset-metadata.json $(BUILD)/kaggle_dataset/dataset-metadata.json
	$(PY) kaggle/meta.py upload $(BUILD)/wheels -m "wheels" --kaggle $(KAGGLE)
	$(PY) kaggle/meta.py upload $(BUILD)/kaggle_dataset -m "code and weights" --kaggle $(KAGGLE)

kaggle-push: kaggle-check
	rm -rf $(BUILD)/kaggle_kernel && mkdir -p $(BUILD)/kaggle_kernel
	cp notebooks/kaggle_inference.ipynb $(BUILD)/kaggle_kernel/
	$(PY) kaggle/meta.py fill kaggle/kernel-metadata.json $(BUILD)/kaggle_kernel/kernel-metadata.json
	$(KAGGLE) kernels push -p $(BUILD)/kaggle_kernel

# The pushed notebook's state (queued, running, complete or error): wait for "complete" before submitting.
kaggle-status: kaggle-check
	$(KAGGLE) kernels status "$$($(PY) kaggle/meta.py username)/rsna2024-lumbar-inference"
VERSION ?= 1
kaggle-submit: kaggle-check
	$(KAGGLE) competitions submit -c $(COMPETITION) -k "$$($(PY) kaggle/meta.py username)/rsna2024-lumbar-inference" \
	  -v $(VERSION) -f submission.csv -m "rsna2024 lumbar ensemble"
