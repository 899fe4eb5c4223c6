#!/usr/bin/env bash
# The main job: the whole life of a model on the built-in world, raw text to chat, in 5-11 minutes on
# a 2-core CPU (269-299 s on one machine, 468-632 s on another, see README; so are the estimates below).
# Every stage prints step logs with an ETA and writes its exam into OUT/report.md.
#     bash pipeline.sh            # everything in out/
#     bash pipeline.sh myrun      # everything in myrun/
set -euo pipefail
OUT=${1:-out}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # relative to where it was called from, not to the scripts
cd "$(dirname "$0")"
PY=${PYTHON:-python}
start=$SECONDS
stage() { printf '\n=== [%s/6] %s (about %s; %d s so far) ===\n' "$1" "$2" "$3" $((SECONDS - start)); }

stage 1 "pretraining: a tokenizer, then next-token prediction on the world's documents" "2.5-5 min"
$PY train.py --out-dir "$OUT"
stage 2 "SFT: conversations, loss on the assistant's tokens only" "45-95 s"
$PY sft.py --out-dir "$OUT"
stage 3 "RLHF: comparisons, a reward model, then the policy gradient with a KL leash" "1.5-4 min"
$PY rlhf.py --out-dir "$OUT"
stage 4 "export: one float16 blob, checked against PyTorch by run.py" "2 s"
$PY export.py --ckpt "$OUT/rlhf.pt" --out "$OUT/model.bin"
stage 5 "arena: the models answer the same questions, the labeler judges, Elo ratings" "5-10 s"
$PY arena.py --out-dir "$OUT"
stage 6 "chat: run.py (NumPy only) answers questions about people the SFT data never mentioned" "1 s"
# (not `tee /dev/stderr`: when stderr is a log file, tee reopens it from the start and overwrites the log)
questions=$($PY world.py --questions 3)
printf '%s\n' "$questions"
printf '%s\n' "$questions" | $PY run.py "$OUT/model.bin" --chat --temperature 0
printf '\nDone in %d s. The report card: %s/report.md; the two files: %s/model.bin and run.py\n' \
    $((SECONDS - start)) "$OUT" "$OUT"
