# Every target creates and uses the local .venv by itself, so each is one command on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-oldest bench assets assets-nx assets-video lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Main job: train a tokenizer briefly on the built-in synthetic scenes (times in the README), then generate
# images for four prompts with the text-to-image pipeline shipped in assets/pipeline.
DEMO_PROMPTS := --prompt "a large red circle at the top left" \
	--prompt "a small blue star at the center" \
	--prompt "a large yellow square at the bottom right and a small white triangle at the top" \
	--prompt "a large green hexagon at the left, a small purple diamond at the top right and a large orange star at the bottom"
demo: $(STAMP)
	$(BIN)/accelerate launch scripts/train_tokenizer.py --output-dir runs/demo --steps 300 --preset vq-f8 \
		--palette classic --photo-fraction 0
	$(BIN)/python scripts/generate.py $(DEMO_PROMPTS) --out runs/demo/generated
	@echo "tokenizer: runs/demo/model, runs/demo/reconstructions.png; generated PNGs: runs/demo/generated/"

# Rebuild the shipped text-to-image assets from seed 0 (tokenizer, CLIP, grader, generator). The generator's
# 8000 steps of 128 took 3.3 minutes on one H100 GPU (how the shipped one was trained); on 2 CPU cores they take
# about 10 hours (4.6 s per step), the rest about 30 minutes. The toy VLM for the pruning benchmark is rebuilt
# separately: python scripts/train_toy_vlm.py
GEN_STEPS := --steps 8000 --batch-size 128 --warmup-steps 200
assets: $(STAMP)
	$(BIN)/accelerate launch scripts/train_tokenizer.py --preset vq-f4 --palette classic --photo-fraction 0 \
		--output-dir runs/assets/tokenizer
	$(BIN)/python scripts/train_clip.py --out runs/assets/clip
	$(BIN)/python scripts/train_grader.py --out assets/grader
	$(BIN)/accelerate launch scripts/train_generator.py --tokenizer runs/assets/tokenizer/model \
		--prompt-encoder runs/assets/clip --output-dir runs/assets/generator --pipeline-dtype bfloat16 $(GEN_STEPS)
	$(BIN)/python scripts/tune_sampling.py --pipeline runs/assets/generator/pipeline --write
	cp runs/assets/clip/training.json runs/assets/generator/pipeline/prompt_encoder/
	rm -rf assets/pipeline && cp -r runs/assets/generator/pipeline assets/pipeline

# The shipped next-X pipeline (2x2 cells, about 1.7 hours on 2 CPU cores) over the tokens of `make assets`; its
# tokenizer and prompt encoder are links to assets/pipeline's, so only the generator is stored twice.
NX := runs/assets/generator_nx_cell_k2
assets-nx: $(STAMP)
	$(BIN)/accelerate launch scripts/train_generator.py --preset nx-small --entity cell --k 2 \
		--tokenizer runs/assets/tokenizer/model --prompt-encoder runs/assets/clip --output-dir $(NX) \
		--pipeline-dtype bfloat16
	$(BIN)/python scripts/tune_sampling.py --pipeline $(NX)/pipeline --guidance-scales 1.5,2,2.5,3,4 --top-ks 0 --write
	rm -rf assets/pipeline_nx_cell_k2 && mkdir assets/pipeline_nx_cell_k2
	cp -r $(NX)/pipeline/generator $(NX)/pipeline/model_index.json $(NX)/pipeline/sampling_sweep.json \
		assets/pipeline_nx_cell_k2/
	ln -s ../pipeline/tokenizer assets/pipeline_nx_cell_k2/tokenizer
	ln -s ../pipeline/prompt_encoder assets/pipeline_nx_cell_k2/prompt_encoder

# The shipped text-to-video pipeline from seed 0 (times in the README), factorized: assets/pipeline draws each clip's
# first frame for the prompt's start ("a large red circle at the right" for "... moving to the left"), then nt-video
# samples 32 motion tokens of the anchored 1D video tokenizer (trained here on the classic moving-shape clips, its
# decoder given assets/pipeline's reconstruction of the first frame) after that frame's 256 tokens, 8 candidates per
# clip, re-ranked by their round trip through the motion tokenizer (rerank="round-trip"). The generator reads whole
# clips through assets/pipeline's prompt encoder but learns only the motion tokens (--first-frame-given). The image
# tokenizer, prompt encoder and first-frame pipeline are links to assets/pipeline, so the folder stays under 10 MB.
VIDEO := runs/assets/video
VIDEO_TOKENIZER_STEPS := 1000
VIDEO_GEN_STEPS := --steps 3000 --batch-size 32 --train-samples 20000
assets-video: $(STAMP)
	$(BIN)/accelerate launch scripts/train_tokenizer.py --tokenizer video1d --preset video1d-32-anchor \
		--steps $(VIDEO_TOKENIZER_STEPS) --palette classic --photo-fraction 0 \
		--anchor-tokenizer assets/pipeline/tokenizer --output-dir $(VIDEO)/motion
	$(BIN)/python scripts/assemble_video_tokenizer.py --image assets/pipeline/tokenizer \
		--motion $(VIDEO)/motion/model --output-dir $(VIDEO)/tokenizer
	$(BIN)/accelerate launch scripts/train_generator.py --data videos --tokenizer $(VIDEO)/tokenizer/model \
		--preset nt-video $(VIDEO_GEN_STEPS) --eval-samples 256 --first-frame-given \
		--pipeline-dtype bfloat16 --pipeline-tokenizer-dtype bfloat16 --output-dir $(VIDEO)/generator
	rm -rf assets/video_pipeline
	$(BIN)/python scripts/compose_video_pipeline.py --pipeline $(VIDEO)/generator/pipeline \
		--first-frame assets/pipeline --frame-captions moving-shapes --output-dir assets/video_pipeline
	rm -r assets/video_pipeline/prompt_encoder assets/video_pipeline/tokenizer/image assets/video_pipeline/first_frame
	ln -s ../pipeline/prompt_encoder assets/video_pipeline/prompt_encoder
	ln -s ../../pipeline/tokenizer assets/video_pipeline/tokenizer/image
	ln -s ../pipeline assets/video_pipeline/first_frame
	$(BIN)/python scripts/tune_sampling.py --pipeline assets/video_pipeline --guidance-scales 1,2 \
		--temperatures 1.0,0.7,0.5,0.3 --top-ks 0 --num-candidates 8 --rerank round-trip --write

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The same suite on the oldest versions pyproject.toml accepts (constraints/oldest.txt), in a venv of its own.
OLD_VENV := .venv-oldest
OLD_STAMP := $(OLD_VENV)/.installed
$(OLD_STAMP): pyproject.toml constraints/oldest.txt
	$(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/pip install --quiet --upgrade pip
	$(OLD_VENV)/bin/pip install --quiet -c constraints/oldest.txt -e ".[dev]"
	touch $(OLD_STAMP)

# The pruning suite (the code that hooks into transformers), the bounds check, a smoke of the tokenizer,
# quantizer and generator models, the transformers text encoders, the standard-size presets, the non-finite
# guard (accelerate) and the shared training helpers (torch's private bf16 checks); `make test-oldest
# OLDEST_TESTS=tests` runs everything there.
OLDEST_TESTS := tests/test_pruning_models.py tests/test_pruning_families.py tests/test_pruning_methods.py \
	tests/test_pruning_selection.py tests/test_toy_vlm.py \
	tests/test_dependencies.py tests/test_tokenizer_model.py tests/test_quantizers.py tests/test_generators.py \
	tests/test_text_encoders.py tests/test_standard_sizes.py tests/test_nonfinite.py tests/test_train_core.py
test-oldest: $(OLD_STAMP)
	$(OLD_VENV)/bin/python -m pytest -q -m "not slow" $(OLDEST_TESTS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_tokenizer.py
	$(BIN)/python scripts/bench_generation.py
	$(BIN)/python scripts/bench_pruning.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(OLD_VENV) runs
