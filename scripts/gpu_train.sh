#!/usr/bin/env bash
# Train stronger teachers and a student distilled from them on a borrowed GPU, inside a time box.
#
# Runs on the GPU machine, from the repository root, with the FER+ pack carried in `.device/`
# (`make device-pack` writes it here; docs/training.md, "Training on a GPU"). It needs only what that machine
# has: PyTorch, ONNX Runtime, OpenCV, Typer, Rich. Four teachers train at once (each is bound by
# kernel launches on its own CPU core, so the GPU has room for all), each fitted into
# TEACHER_BUDGET seconds; their flip-averaged ensemble is scored on FER2013Valid; then the shipped
# shape (80 px, widths 32-256) is distilled from them within STUDENT_BUDGET seconds.
#
# Brought back in $OUT (at most 8 files): student.pt (slim checkpoint: export it here with
# `moodlens train emotion --export-only`), teachers_train.npz (the ensemble's probabilities on the
# training faces: `--teacher-file` distils from them on a CPU, where the teachers cannot come back,
# being over 16 MB), teachers_valid.npy, summary.json and logs.tar.gz.
#
#   bash scripts/gpu_train.sh                      # defaults: 210 s teachers, 120 s student: about 7 min in all
#   TEACHER_BUDGET=60 STUDENT_BUDGET=60 bash scripts/gpu_train.sh
#   SMOKE=1 OUT=/tmp/smoke bash scripts/gpu_train.sh   # tiny nets, one epoch each: checks the plumbing on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-.device/ferplus.npz}
RUNS=${RUNS:-runs/gpu}
OUT=${OUT:-$RUNS/out}
TEACHER_BUDGET=${TEACHER_BUDGET:-210}
STUDENT_BUDGET=${STUDENT_BUDGET:-120}
PY=${PY:-python3}  # the GPU machine's python3 holds PyTorch; here: PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -f "$PACK" ] || { echo "error: $PACK: no FER+ pack (make device-pack, then carry .device)" >&2; exit 2; }
mkdir -p "$RUNS" "$OUT"

if [ "${SMOKE:-0}" = 1 ]; then  # the same steps with nets small enough for a CPU
  T1="--size 48 --widths 8,8,16,16 --depths 1,1,1"; T2="$T1"; T3="$T1"; T4="--size 40 --widths 8,8,16,16 --depths 1,1,1"
  S="--size 48 --widths 8,8,16,16 --depths 1,1,1"; EPOCHS=1
else
  # estimated 0.6 PFLOP for an epoch of all four: ~55 epochs each in 210 s if the GPU gives them 150 TFLOP/s
  T1="--size 80 --widths 48,96,192,384"                     # 1.5x the shipped width (2.3x its computation)
  T2="--size 80 --widths 32,64,128,256 --depths 3,3,3"      # deeper (1.5x)
  T3="--size 80 --widths 32,64,128,256"                     # the shipped shape, from scratch
  T4="--size 64 --widths 32,64,128,256 --seed 7"            # another size and seed: errs elsewhere
  S="--size 80 --widths 32,64,128,256"; EPOCHS=150
fi
train() { "$PY" -m moodlens.cli_train emotion --data "$PACK" --no-export "$@"; }

"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu only')"
start=$(date +%s)
pids=()
for t in 1 2 3 4; do
  eval "shape=\$T$t"
  # shellcheck disable=SC2086
  train --out "$RUNS/t$t" $shape --epochs "$EPOCHS" --time-budget "$TEACHER_BUDGET" >"$RUNS/t$t.log" 2>&1 &
  pids+=($!)
done
teachers=()
for t in 1 2 3 4; do  # only teachers whose schedule ran to its end
  if wait "${pids[$((t - 1))]}"; then teachers+=(--teacher "$RUNS/t$t/checkpoint.pt"); else echo "teacher $t failed:" >&2; tail -n 5 "$RUNS/t$t.log" >&2; fi
done
echo "teachers done in $(( $(date +%s) - start )) s ($(( ${#teachers[@]} / 2 )) of 4 finished)"
[ ${#teachers[@]} -gt 0 ] || exit 1

# the teachers, alone and together, on FER2013Valid (each face and its mirror, as distillation sees them),
# and their mean on FER2013Train: the student's distillation targets
"$PY" - "$PACK" "$OUT" "${teachers[@]}" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from moodlens.training.ferplus import load_splits
from moodlens.training.train import resolve_device, save_teacher_file, split_arrays, teacher_targets
pack, out, paths = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4::2]
splits, template, provenance = load_splits(pack, out, log=lambda m: None)
dev = resolve_device("auto")
summary = {"teachers": {}}
probs = {}
for name in ("FER2013Valid", "FER2013Train"):
    at = {}  # faces aligned at each teacher's own size, once
    x_at = lambda s: at.setdefault(s, split_arrays(splits[name], template, s)["x"])
    probs[name] = [teacher_targets((p,), x_at(48), dev, images_at=x_at) for p in paths]
y = splits["FER2013Valid"].majority[splits["FER2013Valid"].usable]  # split_arrays' labels, without aligning again
for p, pv in zip(paths, probs["FER2013Valid"]):
    log = [json.loads(l) for l in open(Path(p).parent / "log.jsonl")]
    summary["teachers"][p] = {"valid_acc_flip": float((pv.argmax(1) == y).mean()), "epochs": len(log),
                              "seconds_per_epoch": float(np.mean([h["seconds"] for h in log]))}
ens = {k: np.mean(v, 0).astype(np.float32) for k, v in probs.items()}
summary["ensemble_valid_acc_flip"] = float((ens["FER2013Valid"].argmax(1) == y).mean())
np.save(out / "teachers_valid.npy", ens["FER2013Valid"])
save_teacher_file(out / "teachers_train.npz", ens["FER2013Train"], provenance["FER2013Train"]["sha256"],
                  [json.dumps({"checkpoint": p, **json.load(open(Path(p).parent / "config.json"))["config"]}) for p in paths])
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY

start=$(date +%s)
# shellcheck disable=SC2086
train --out "$RUNS/student" $S --epochs "$EPOCHS" --time-budget "$STUDENT_BUDGET" --teacher-file "$OUT/teachers_train.npz" \
  >"$RUNS/student.log" 2>&1 \
  || { tail -n 20 "$RUNS/student.log" >&2; exit 1; }
echo "student done in $(( $(date +%s) - start )) s"
"$PY" -m moodlens.cli_train slim "$RUNS/student/checkpoint.pt" "$OUT/student.pt"
"$PY" - "$RUNS/student/log.jsonl" "$OUT/summary.json" <<'PY'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
s = json.load(open(sys.argv[2]))
s["student"] = {"epochs": len(log), "valid_acc_ema_last": log[-1]["valid_acc_ema"],
                "valid_acc_ema_best": max(h["valid_acc_ema"] for h in log)}
open(sys.argv[2], "w").write(json.dumps(s, indent=2))
print(json.dumps(s["student"]))
PY
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls -d ./*.log ./*/log.jsonl ./*/config.json 2>/dev/null)
ls -la "$OUT"
