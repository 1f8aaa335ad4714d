# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
SAMPLE ?= $(DATA)/video/pyfeat/WolfgangLanger_Pexels.mp4
OUT ?= out/demo

.PHONY: setup demo test bench train clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==26.3
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	@if [ -f "$(SAMPLE)" ]; then \
		$(BIN)/moodlens analyze "$(SAMPLE)" --out $(OUT) --db sqlite:///$(OUT)/moodlens.db --emoji-video --report; \
	else \
		echo "Sample clip $(SAMPLE) not found. Run: make demo SAMPLE=/path/to/your/video.mp4"; exit 2; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_speed.py
	$(BIN)/python benchmarks/detection_fddb.py

train: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[train]'
	$(BIN)/moodlens train emotion --data $(DATA)/ferplus --out runs/emotion

clean:
	rm -rf out runs .pytest_cache
