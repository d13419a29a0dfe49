# Two commands a user needs: `make demo` (pretrain on the generated sample data, fine-tune BTCV and BraTS from
# those weights, evaluate, infer) and `make test`. CPU=1 installs PyTorch's CPU build (requirements-cpu.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CPU ?=
# what `make install` installs: the lock of a known-good install (CUDA build of PyTorch, ~9 GB, runs on the CPU
# too), or with CPU=1 the CPU-only set (no CUDA wheel) plus the test tools
REQUIREMENTS := $(if $(CPU),-r requirements-cpu.txt -r requirements-dev.txt,-r requirements-lock.txt)
# MONAI Label 0.8.5 pins clash with the main environment: it gets its own (tools/monailabel_serve.py)
MONAILABEL_VENV ?= .venv-monailabel
SAMPLE_DIR ?= data/sample
DEMO_DIR ?= runs/demo
# the pretext method of `make demo`: the name of an overlay in bundles/dae_pretrain/configs (dae, volume_fusion)
METHOD ?= dae
# Demo sizes: small enough for a laptop CPU (about 15 minutes for the whole chain), the same on a GPU, so that
# the commands in the docs work after `make demo` on any machine. The paper's sizes are the bundles' defaults.
DEMO_FEATURE_SIZE ?= 12
DEMO_ARGS ?= --feature_size $(DEMO_FEATURE_SIZE) --num_workers 2
PRETRAIN := $(DEMO_DIR)/dae_pretrain
BTCV := $(DEMO_DIR)/dae_btcv_seg
BRATS := $(DEMO_DIR)/dae_brats_cls
BTCV_DATA := $(SAMPLE_DIR)/btcv
BRATS_DATA := $(SAMPLE_DIR)/brats/MICCAI_BraTS_2018_Data_Training
RUN := $(PY) -m monai.bundle run
PRETRAIN_CONFIGS := "['bundles/dae_pretrain/configs/pretrain_base.json','bundles/dae_pretrain/configs/$(METHOD).json']"
BTCV_ARGS := --dataset_dir $(BTCV_DATA) --bundle_root $(BTCV) --roi_size "[64,64,32]" $(DEMO_ARGS)
BRATS_ARGS := --dataset_dir $(BRATS_DATA) --bundle_root $(BRATS) --spatial_size "[64,64,64]" $(DEMO_ARGS)

.PHONY: install test test-extended test-docs compare-pretexts benchmark-data demo demo-pretrain demo-btcv demo-brats verify-bundles sample-data clean monailabel-env test-monailabel

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-lock.txt requirements-cpu.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(REQUIREMENTS)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

test: install
	$(PY) -m pytest -q

# the slowest end-to-end checks (marker "extended"), kept out of the default suite
test-extended: install
	$(PY) -m pytest -q -m extended

# every shell command of the docs, as written (marker "docs"): the quick ones run, the slow ones are checked
# statically; needs the outputs of `make demo`
test-docs: install
	$(PY) -m pytest -q -m docs tests/test_demo_outputs.py tests/test_doc_commands.py

# the head-to-head comparison of the pretext methods (tools/compare_pretexts.py) on the sample data at the small
# budget; COMPARE_ARGS adds options (e.g. --data_dir /data/ssl --budget bundle)
COMPARE_DIR ?= runs/compare
COMPARE_ARGS ?=
compare-pretexts: install
	$(PY) -m tools.compare_pretexts --output_dir $(COMPARE_DIR) $(COMPARE_ARGS)

# the dae_pretrain bundle's data-pipeline tables (throughput per store and worker count, peak RSS for 100 to 10,000
# volumes, the 10,000-entry data list check) in its docs; about 10 minutes on a 2-core machine
benchmark-data: install
	$(PY) -m tools.benchmark --only data_formats,data_memory --output_markdown bundles/dae_pretrain/docs/data_pipeline.md

monailabel-env: $(MONAILABEL_VENV)/.installed

$(MONAILABEL_VENV)/.installed: tools/monailabel_requirements.txt | install
	$(PY) -m tools.monailabel_serve install --venv $(MONAILABEL_VENV)

test-monailabel: install monailabel-env
	MONAILABEL_VENV=$(MONAILABEL_VENV) $(PY) -m pytest -q -m monailabel tests/test_monailabel.py

sample-data: install
	$(PY) -m tools.sample_data --output_dir $(SAMPLE_DIR)

demo: demo-pretrain demo-btcv demo-brats
	@echo ""
	@echo "Demo artifacts (every command that made them is in README.md, \"The demo, step by step\"):"
	@echo "  pretrained model ($(METHOD)):     $(PRETRAIN)/models/model.pt"
	@echo "  pretraining figures:             $(PRETRAIN)/figures/"
	@echo "  BTCV fine-tuned model:           $(BTCV)/models/model.pt"
	@echo "  BTCV evaluation and figures:     $(BTCV)/runs/eval/  $(BTCV)/runs/figures/"
	@echo "  BTCV label maps (inference):     $(BTCV)/eval/"
	@echo "  BraTS fine-tuned model:          $(BRATS)/models/model.pt"
	@echo "  BraTS evaluation and figures:    $(BRATS)/runs/eval/  $(BRATS)/runs/figures/"
	@echo "  BraTS predictions (inference):   $(BRATS)/eval/predictions.csv"
	@echo "  TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR) --host 127.0.0.1"

demo-pretrain: sample-data
	$(RUN) training --config_file $(PRETRAIN_CONFIGS) --dataset_dir $(SAMPLE_DIR) --output_dir $(PRETRAIN) \
		--ckpt_dir $(PRETRAIN)/models --roi_size "[64,64,64]" --max_epochs 3 $(DEMO_ARGS) --overwrite True

demo-btcv: install
	$(RUN) training --config_file bundles/dae_btcv_seg/configs/train.json $(BTCV_ARGS) --max_epochs 2 --val_interval 1 --overwrite True \
		--pretrained_path $(PRETRAIN)/models/model.pt
	$(RUN) --config_file "['bundles/dae_btcv_seg/configs/train.json','bundles/dae_btcv_seg/configs/evaluate.json']" $(BTCV_ARGS)
	$(RUN) --config_file bundles/dae_btcv_seg/configs/inference.json $(BTCV_ARGS)

demo-brats: install
	$(PY) -m tools.brats_datalist --data_dir $(BRATS_DATA)
	$(RUN) training --config_file bundles/dae_brats_cls/configs/train.json $(BRATS_ARGS) --max_epochs 2 --overwrite True \
		--pretrained_path $(PRETRAIN)/models/model.pt
	$(RUN) --config_file "['bundles/dae_brats_cls/configs/train.json','bundles/dae_brats_cls/configs/evaluate.json']" $(BRATS_ARGS)
	$(RUN) --config_file bundles/dae_brats_cls/configs/inference.json $(BRATS_ARGS)

# the Model Zoo's checks (folder, changelog, metadata schema, network input/output, TorchScript export) on every
# bundle, with the weights `make demo` trained, at the demo's sizes (the metadata's 96^3 / 128^3 take minutes on a CPU)
VERIFY := $(PY) -m tools.verify_bundle --overrides "{'feature_size': $(DEMO_FEATURE_SIZE)}" --spatial_shape "[64,64,64]"
verify-bundles: install
	$(VERIFY) --bundle dae_pretrain --weights $(PRETRAIN)/models/model.pt
	$(VERIFY) --bundle dae_btcv_seg --weights $(BTCV)/models/model.pt
	$(VERIFY) --bundle dae_brats_cls --weights $(BRATS)/models/model.pt

clean:
	rm -rf $(DEMO_DIR) $(SAMPLE_DIR)
