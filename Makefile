# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
SAMPLE ?= $(DATA)/video/pyfeat/WolfgangLanger_Pexels.mp4
OUT ?= out/demo

.PHONY: setup demo test bench train train-all device-pack clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==26.3
	$(BIN)/python -m pip install -q -e '.[test,ray,aws]'
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

TRAIN := $(BIN)/moodlens train emotion --data $(DATA)/ferplus

train: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[train]'
	$(TRAIN) --out runs/emotion

# Every run behind the shipped model, in order: runs 1-4, SFace and SFace-leaky (teachers), run 8 (about 8 h
# on 2 CPU cores with AMX), then the runs measured but not shipped (about 8 h more); far less with --device cuda.
# Each step resumes from its checkpoint, so an interrupted chain picks up where it stopped.
teachers = $(foreach r,$(1),--teacher runs/$(r)/checkpoint.pt)
train-all: train
	$(TRAIN) --out runs/emotion2 --init runs/emotion/checkpoint.pt --lr 0.03 --epochs 30
	$(TRAIN) --out runs/emotion3 --widths 32,64,128,256 $(call teachers,emotion emotion2)
	$(TRAIN) --out runs/emotion4 --init runs/emotion3/checkpoint.pt --lr 0.03 --epochs 20 --widths 32,64,128,256 --aug-strength 0.5
	$(TRAIN) --out runs/sface --arch sface --size 64 --lr 0.02 --epochs 10
	$(TRAIN) --out runs/sfleaky --arch sface-leaky --size 64 --init runs/sface/checkpoint.pt --lr 0.02 --epochs 12 \
		$(call teachers,sface emotion3 emotion4)
	$(TRAIN) --out runs/r80 --size 80 --widths 32,64,128,256 --init runs/emotion4/checkpoint.pt --lr 0.03 --epochs 20 $(call teachers,sface sfleaky emotion3 emotion4)
	@echo "the shipped model (run 8): runs/r80/emotion.{onnx,json} (copy into src/moodlens/models/)"
	# measured, not shipped: the earlier shipped models (runs 3 + 4, run 7), run 5, the wide student, SFace-leaky
	# with run 3, run 6, the 64 px pair, runs 9 and 10 (64 px from scratch), run 11 (run 8 with online teachers) and its pair with run 10
	$(TRAIN) --out runs/r64b --size 64 --widths 32,64,128,256 --init runs/emotion4/checkpoint.pt --lr 0.03 --epochs 20 $(call teachers,sface sfleaky emotion3 emotion4)
	$(TRAIN) --out runs/ens34 --member runs/emotion3/checkpoint.pt --member runs/emotion4/checkpoint.pt
	$(TRAIN) --out runs/emotion5 --init runs/emotion3/checkpoint.pt --lr 0.03 --epochs 20 --widths 32,64,128,256 \
		$(call teachers,sface emotion emotion2 emotion3 emotion4)
	$(TRAIN) --out runs/wide --widths 48,96,192,384 --epochs 35 \
		$(call teachers,sface emotion emotion2 emotion3 emotion4 emotion5)
	$(TRAIN) --out runs/ens_sl3 --member runs/sfleaky/checkpoint.pt --member runs/emotion3/checkpoint.pt
	$(TRAIN) --out runs/r64 --size 64 --widths 32,64,128,256 --init runs/emotion3/checkpoint.pt --lr 0.03 --epochs 20 $(call teachers,sface sfleaky emotion3 emotion4)
	$(TRAIN) --out runs/ens64 --member runs/r64/checkpoint.pt --member runs/r64b/checkpoint.pt
	$(TRAIN) --out runs/s64 --size 64 --widths 32,64,128,256 $(call teachers,sface sfleaky r64b r80)
	$(TRAIN) --out runs/s64c2 --size 64 --widths 32,64,128,256 --init runs/s64/checkpoint.pt --lr 0.03 --epochs 20 \
		$(call teachers,sface sfleaky r64b r80)
	$(TRAIN) --out runs/r80o --size 80 --widths 32,64,128,256 --init runs/r80/checkpoint.pt --lr 0.02 --epochs 14 \
		$(call teachers,emotion2 emotion4 r80 s64c2) --online-teachers
	$(TRAIN) --out runs/pair11 --member runs/r80o/checkpoint.pt --member runs/s64c2/checkpoint.pt

# A borrowed GPU machine cannot read ../shared: FER+ packed into .device/ (55 MiB) travels with `carry`
# (docs/training.md, "Training on a GPU"; scripts/gpu_train.sh runs there).
device-pack: $(STAMP)
	test -f .device/ferplus.npz || $(BIN)/moodlens train pack --data $(DATA)/ferplus --out .device/ferplus.npz

clean:
	rm -rf out runs .pytest_cache
