#!/usr/bin/env bash
# The study's training runs on a GPU, end to end through the trainer binaries: Amazon 2018 Video
# Games, holdout split (20 % of users, seed 42), each user's earliest 20 items, d 1024, 5 layers,
# 8 heads, FFN 4096, batch 1024, AdamW, bf16; validation every epoch.
#   - train_ours: title-embedding init (the study's best), stage 1 with the item table frozen for
#     4 epochs at a constant 5e-4, then stage 2, 8 epochs, warmup + cosine;
#   - train_ours_random: the same model from a random init, 12 epochs in one stage.
# Run from the repository root with a kit folder that scripts/prepare_gpu_check.sh assembled
# (it needs examples/train_ours_random there too, and the title embeddings; see below):
#   SEQREC_DATA=<kit>/data/amazon18_games SEQREC_EMB=<kit>/data/games_minilm \
#     bash scripts/gpu_study.sh <kit> [out-dir]
# SEQREC_EMB is the prefix of <prefix>.npy and <prefix>.ids.txt (tools/embed_titles.py writes
# them; derived data: never commit it). Prints one row per run: validation MRR@10 / NDCG@10 /
# HR@10 after the last epoch, training seconds and the wall time of the whole binary.
# Environment: SEQREC_EMB_ADAPTER (default lift), SEQREC_STUDY_LR (stage-2 peak learning rate, default 5e-4), SEQREC_STUDY_DROPOUT
# (default 0.2), SEQREC_STUDY_ARGS (extra trainer flags for every run), SEQREC_GPU_STEP_TIMEOUT
# (seconds per run, default 240).
set -u
cd "$(dirname "$0")/.."
kit="${1:-build-gpu-kit}"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
[[ -d "$kit/lib" ]] && export LD_LIBRARY_PATH="$(cd "$kit/lib" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
data="${SEQREC_DATA:?set SEQREC_DATA to the Games folder (interactions.tsv)}"
emb="${SEQREC_EMB:-}"
lr="${SEQREC_STUDY_LR:-5e-4}"
dropout="${SEQREC_STUDY_DROPOUT:-0.2}"
limit="${SEQREC_GPU_STEP_TIMEOUT:-240}"
common=(--data "$data" --protocol holdout --truncate earliest --max-len 20 --dim 1024 --layers 5
  --heads 8 --ffn-dim 4096 --dropout "$dropout" --batch 1024 --lr "$lr" --eval-every 1
  --device cuda --bf16 --no-progress)
# Extra trainer flags for every run, e.g. SEQREC_STUDY_ARGS="--exclude-history --weight-decay 0.1"
read -r -a extra <<<"${SEQREC_STUDY_ARGS:-}"
common+=("${extra[@]}")
failed=0
rows=()

# run NAME BINARY ARGS...: runs one trainer, keeps its log and metrics JSON in $out.
run() {
  local name="$1" exe="$2"
  shift 2
  echo "-- $exe $*"
  local t0=$SECONDS
  timeout "$limit" "$exe" "${common[@]}" "$@" --metrics-json "$out/$name.json" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]} secs=$((SECONDS - t0))
  if [[ $rc -ne 0 || ! -f "$out/$name.json" ]]; then
    failed=1
    rows+=("| $name | FAILED (rc $rc) | | | | | $secs |")
    return
  fi
  rows+=("$(python3 - "$out/$name.json" "$name" "$secs" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r["valid"]
train_s = r.get("train_seconds", float("nan"))
print(f"| {sys.argv[2]} | {v['mrr@10']:.4f} | {v['ndcg@10']:.4f} | {v['hr@10']:.4f} | "
      f"{v['users']} | {train_s:.1f} | {sys.argv[3]} |")
PY
)")
}

nvidia-smi -L || true
if [[ -n $emb ]]; then
  # lift: the encoder may be narrower than d 1024 (MiniLM: 384); a random orthonormal map keeps
  # every dot product between titles (exact and pca cannot widen).
  run train_ours "$kit/examples/train_ours" --embeddings "$emb.npy" --embedding-ids "$emb.ids.txt" \
    --embedding-adapter "${SEQREC_EMB_ADAPTER:-lift}" --stage1-epochs 4 --stage1-lr 5e-4 --epochs 8
else
  echo "SEQREC_EMB not set: skipping train_ours (title init needs the title embeddings)"
fi
run train_ours_random "$kit/examples/train_ours_random" --epochs 12

echo
echo "study config on the GPU (valid split; lr $lr, dropout $dropout, bf16${SEQREC_STUDY_ARGS:+; $SEQREC_STUDY_ARGS}):"
echo "| run | MRR@10 | NDCG@10 | HR@10 | users | train s | wall s |"
echo "|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "$r"; done
exit $failed
