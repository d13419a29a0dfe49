# Two commands a user needs: `make demo` (pretrain DAE on the generated sample data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# MONAI Label 0.8.5 pins clash with the main environment: it gets its own (tools/monailabel_serve.py)
MONAILABEL_VENV ?= .venv-monailabel
SAMPLE_DIR ?= data/sample
DEMO_DIR ?= runs/demo
BUNDLE := bundles/dae_pretrain
# the pretext method of `make demo`: the name of an overlay in $(BUNDLE)/configs (dae, volume_fusion)
METHOD ?= dae
# Demo settings: small and fast on a CPU, the paper's crop and network size when a GPU is present.
DEMO_CPU_ARGS ?= --roi_size "[64,64,64]" --feature_size 12 --max_epochs 3 --num_workers 2
DEMO_GPU_ARGS ?= --roi_size "[96,96,96]" --feature_size 48 --max_epochs 20 --num_workers 0

.PHONY: install test test-extended demo sample-data clean monailabel-env test-monailabel

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

test: install
	$(PY) -m pytest -q

# the slowest end-to-end checks (marker "extended"), kept out of the default suite
test-extended: install
	$(PY) -m pytest -q -m extended

monailabel-env: $(MONAILABEL_VENV)/.installed

$(MONAILABEL_VENV)/.installed: tools/monailabel_requirements.txt | install
	$(PY) -m tools.monailabel_serve install --venv $(MONAILABEL_VENV)

test-monailabel: install monailabel-env
	MONAILABEL_VENV=$(MONAILABEL_VENV) $(PY) -m pytest -q -m monailabel tests/test_monailabel.py

sample-data: install
	$(PY) -m tools.sample_data --output_dir $(SAMPLE_DIR)

demo: sample-data
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		args='$(DEMO_GPU_ARGS)'; echo "GPU found: pretraining at 96^3, feature size 48"; \
	else \
		args='$(DEMO_CPU_ARGS)'; echo "No GPU: pretraining at 64^3, feature size 12 (CPU demo settings)"; \
	fi; \
	eval $(PY) -m monai.bundle run training --config_file \"[\'$(BUNDLE)/configs/pretrain_base.json\',\'$(BUNDLE)/configs/$(METHOD).json\']\" \
		--dataset_dir $(SAMPLE_DIR) --output_dir $(DEMO_DIR) --ckpt_dir $(DEMO_DIR)/models $$args \
	&& echo "" \
	&& echo "Best model ($(METHOD), by its validation metric): $(DEMO_DIR)/models/model.pt" \
	&& echo "Resumable checkpoints:         $(DEMO_DIR)/checkpoints/" \
	&& echo "Validation previews:           $$(ls -d $(DEMO_DIR)/previews/* | tail -1)" \
	&& echo "Learning curves:               $(DEMO_DIR)/figures/learning_curves.png" \
	&& echo "TensorBoard:                   $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)/tensorboard --host 127.0.0.1"

clean:
	rm -rf $(DEMO_DIR) $(SAMPLE_DIR)
