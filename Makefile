# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/memstream demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

test-all: lint
	$(BIN)/python -m pytest -q -m ""

BENCH_SPEECH := .bench/synth-speech
BENCH_ACTIONS := .bench/synth-actions
BENCH_TRACKS := .bench/synth-tracks
BENCH_DEFECTS := .bench/synth-defects

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/memstream bench core
	$(BIN)/memstream bench recall
	test -f $(BENCH_SPEECH)/manifest.json || $(BIN)/memstream data synth-speech --out $(BENCH_SPEECH) \
		--hours 0.1 --heldout-fraction 1 --longform-count 2 --jobs 2 --seed 7
	$(BIN)/memstream bench asr --data $(BENCH_SPEECH)
	test -f $(BENCH_ACTIONS)/annotations.json || $(BIN)/memstream data synth-actions --out $(BENCH_ACTIONS) \
		--train 0 --val 0 --test 30 --jobs 2
	$(BIN)/memstream bench action --data $(BENCH_ACTIONS)
	test -f $(BENCH_TRACKS)/scenes.json || $(BIN)/memstream data synth-tracks --out $(BENCH_TRACKS) \
		--train 0 --val 0 --test 12 --jobs 2
	$(BIN)/memstream bench track --data $(BENCH_TRACKS)
	grep -qs memstream-synth-defects-3 $(BENCH_DEFECTS)/manifest.json || { rm -rf $(BENCH_DEFECTS); \
		$(BIN)/memstream data synth-defects --out $(BENCH_DEFECTS) --jobs 2; }
	$(BIN)/memstream bench anomaly --data $(BENCH_DEFECTS)

clean:
	rm -rf $(VENV) build *.egg-info .bench
