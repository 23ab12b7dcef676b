# The two commands of the README:  make quickstart   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE := data/uniref90_esm2_pretraining_sample_10k.fasta.gz

.PHONY: setup quickstart test test-fast

$(VENV)/.installed: setup.py tools/install.sh
	tools/install.sh $(VENV)
	touch $@

setup: $(VENV)/.installed

CORPUS := outputs/sample/uniref90_sample
OVERRIDES ?=# dotted.key=value overrides for both quickstart runs, e.g. OVERRIDES=training.train_iters=4

quickstart: setup
	$(PY) -m megatron_plm env
	$(PY) tools/preprocess_data.py --input $(SAMPLE) --output-prefix $(CORPUS) --source-label uniref90 \
		--clusters data/uniref90_esm2_pretraining_sample_10k.clusters50.tsv.gz --workers 2 --overwrite
	rm -rf outputs/tiny_clm outputs/tiny_mlm  # the demo starts fresh; a real run resumes from its checkpoints
	$(PY) -m megatron_plm train --config examples/configs/tiny_clm.yaml $(OVERRIDES)
	$(PY) -m megatron_plm train --config examples/configs/tiny_mlm.yaml $(OVERRIDES)
	$(PY) -m megatron_plm plot outputs/tiny_clm outputs/tiny_mlm --output outputs/quickstart_curves.png

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
PYTEST = status=0; $(PY) -m pytest $(1) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest collected no tests" >&2; exit 1; fi; exit $$status

# pytest-xdist workers: two keep both cores of the dev machine busy while a test waits on its subprocesses
PYTEST_WORKERS ?= 2

test: setup
	@$(call PYTEST,-n $(PYTEST_WORKERS) --durations=15)

test-fast: setup
	@$(call PYTEST,-n $(PYTEST_WORKERS) -m "not slow")
