#!/usr/bin/env bash
# Reproduces the ablation tables of docs/results.md: every variant over 3 seeds on Amazon 2018
# Video Games (holdout, L 20, the study's protocol), the "+ DPO" rows on top of each seed's
# train_ours, one MoE run without the load-balancing loss, and every variant over 3 seeds on
# MovieLens-1M (loo, L 50). Needs ../shared/data and the title embeddings made by
#   tools/embed_titles.py --items ../shared/data/<set>/items.tsv --out cache/embeddings/<name>
# "history" re-evaluates the games step's checkpoints (no training: each run resumes at its last
# epoch) with the user's history items ranked and with them left out (--exclude-history), and
# prints both tables over the seeds.
# Outputs go to cache/runs/ (ignored).
# Usage: scripts/ablation_tables.sh [games|dpo|moe0|ml1m|history|all]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SEQREC_SHARED:-../shared}/data
BIN=${BUILD:-build}/examples
OUT=cache/runs
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive
what=${1:-all}

games_flags=(--data "$DATA/amazon18_games" --protocol holdout --truncate earliest --max-len 20
  --dim 64 --layers 2 --heads 2 --ffn-dim 256 --dropout 0.2 --epochs 4 --stage1-epochs 2
  --batch 256 --lr 0.002 --eval-every 0 --threads 2
  --embeddings cache/embeddings/games_minilm.npy --embedding-ids cache/embeddings/games_minilm.ids.txt)
ml1m_flags=(--data "$DATA/ml-1m" --protocol loo --max-len 50 --dim 64 --layers 2 --heads 1
  --ffn-dim 64 --dropout 0.2 --epochs 10 --stage1-epochs 2 --batch 64 --lr 0.002 --eval-every 0
  --threads 2 --embeddings cache/embeddings/ml1m_minilm.npy
  --embedding-ids cache/embeddings/ml1m_minilm.ids.txt)

if [[ $what == games || $what == all ]]; then
  /usr/bin/time -v "$BIN/ablation" "${games_flags[@]}" --seeds 1,2,3 --analysis \
    --checkpoint-dir "$OUT/ckpt_games" --out "$OUT/ablation_games" 2>&1 | tee "$OUT/ablation_games.log"
fi
if [[ $what == dpo || $what == all ]]; then  # needs the games step's checkpoints
  /usr/bin/time -v "$BIN/ablation" "${games_flags[@]}" --seeds 1,2,3 \
    --only train_ours+dpo,train_ours+dpo+ce,train_ours+sdpo --checkpoint-dir "$OUT/ckpt_games" \
    --out "$OUT/ablation_games_dpo" 2>&1 | tee "$OUT/ablation_games_dpo.log"
fi
if [[ $what == moe0 || $what == all ]]; then
  "$BIN/ablation" "${games_flags[@]}" --seeds 1 --only train_moe --moe-balance 0 \
    --out "$OUT/ablation_games_moe_nobalance" 2>&1 | tee "$OUT/ablation_games_moe_nobalance.log"
fi
if [[ $what == ml1m || $what == all ]]; then
  /usr/bin/time -v "$BIN/ablation" "${ml1m_flags[@]}" --seeds 1,2,3 --analysis \
    --out "$OUT/ablation_ml1m" 2>&1 | tee "$OUT/ablation_ml1m.log"
fi
if [[ $what == history || $what == all ]]; then  # needs the games step's checkpoints
  dir="$OUT/exclude_history"
  mkdir -p "$dir"
  for v in train_sasrec train_ours_random train_ours train_learned_pe train_gated train_moe; do
    # The runner's budget: title-init variants 2 + 4 epochs, random-init ones 6 in one stage.
    case $v in
      train_sasrec | train_ours_random) epochs=(--epochs 6 --stage1-epochs 0) ;;
      *) epochs=() ;;
    esac
    for s in 1 2 3; do
      for mode in all excl; do
        excl=()
        [[ $mode == excl ]] && excl=(--exclude-history)
        log="$dir/${v}_s${s}_${mode}.log"
        "$BIN/$v" "${games_flags[@]}" "${epochs[@]}" --seed "$s" --no-progress \
          --resume "$OUT/ckpt_games/${v}_s${s}.safetensors" "${excl[@]}" \
          --metrics-json "$dir/${v}_s${s}_${mode}.json" >"$log" 2>&1
        grep -q " 0 train tokens/s" "$log" || { echo "$log: the resumed run trained" >&2; exit 1; }
      done
    done
  done
  python3 - "$dir" <<'PY'
import json, statistics as st, sys
d = sys.argv[1]
print("| variant | MRR@10 | HR@10 | NDCG@10 | MRR@10, history excluded | HR@10 | NDCG@10 |")
print("|---|---|---|---|---|---|---|")
for v in ["train_sasrec", "train_ours_random", "train_ours", "train_learned_pe", "train_gated",
          "train_moe"]:
    cells = []
    for mode in ("all", "excl"):
        m = [json.load(open(f"{d}/{v}_s{s}_{mode}.json"))["valid"] for s in (1, 2, 3)]
        mrr = [x["mrr@10"] for x in m]
        cells.append(f"{st.mean(mrr):.4f} ± {st.stdev(mrr):.4f} | "
                     f"{st.mean(x['hr@10'] for x in m):.4f} | "
                     f"{st.mean(x['ndcg@10'] for x in m):.4f}")
    print(f"| `{v}` | " + " | ".join(cells) + " |")
PY
fi
