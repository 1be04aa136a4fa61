#!/usr/bin/env bash
# Two checkouts of trispec-vllm against each other, and against vLLM's own SD, in
# interleaved rounds: one `bench_speed.py --rounds 1` run per (round, build,
# configuration), the order reversed every other round, each build with its own
# cost folder kept across its rounds (as `bench_speed.py` keeps one per run).
#
#   bash benchmarks/ab_builds.sh OLD_TREE NEW_TREE OUT_DIR [ROUNDS] [BATCH]
#
# vLLM's ngram k=3 SD runs once per round (from OLD_TREE; it does not load the
# plugin's step code); the default section over ngram k=3 runs from both trees.
# Writes OUT_DIR/r<round>-<build>-<vllm|default>.json (bench_speed's output) and
# OUT_DIR/summary.json, and prints tok/s per round and the ratios within rounds.
# Never run it beside the test suite or another benchmark.
set -euo pipefail
OLD=$(realpath "$1")
NEW=$(realpath "$2")
OUT=$(realpath -m "$3")
ROUNDS=${4:-3}
BATCH=${5:-1}
PY=${PYTHON:-$OLD/.venv/bin/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT/costs-old" "$OUT/costs-new"
VLLM="vLLM ngram k=3"
DEFAULT="TriSpec default (ngram k=3)"

run() { # tree build label tag round
  local tag=r$5-$2-$4
  TRISPEC_COST_DIR=$OUT/costs-$2 PYTHONPATH=$1 "$PY" "$1/benchmarks/bench_speed.py" --eager \
    --rounds 1 --batches "$BATCH" --max-tokens 128 --only "$3" --out "$OUT/$tag.json" \
    >"$OUT/$tag.log" 2>&1
  echo "round $5 $2: $(grep -a "batch" "$OUT/$tag.log" | grep -a "tok/s" | tail -1)"
}

for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then
    run "$OLD" old "$VLLM" vllm "$r"
    run "$OLD" old "$DEFAULT" default "$r"
    run "$NEW" new "$DEFAULT" default "$r"
  else
    run "$NEW" new "$DEFAULT" default "$r"
    run "$OLD" old "$DEFAULT" default "$r"
    run "$OLD" old "$VLLM" vllm "$r"
  fi
done

"$PY" - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
names = {"old-vllm": "vLLM ngram k=3", "old-default": "old default", "new-default": "new default"}
tps = {label: [] for label in names.values()}
for r in range(1, rounds + 1):
    for tag, label in names.items():
        row = json.loads((out / f"r{r}-{tag}.json").read_text())["results"][0]
        tps[label].append(row["tokens_per_s"])
ratios = {
    "new / old default": [a / b for a, b in zip(tps["new default"], tps["old default"])],
    "new default / vLLM": [a / b for a, b in zip(tps["new default"], tps["vLLM ngram k=3"])],
    "old default / vLLM": [a / b for a, b in zip(tps["old default"], tps["vLLM ngram k=3"])],
}
summary = {"tokens_per_s": tps, "ratios_within_rounds": ratios}
for key, vals in {**tps, **ratios}.items():
    print(f"{key:<22} median {statistics.median(vals):6.3f} ({min(vals):.3f}-{max(vals):.3f})"
          f"  rounds {[round(v, 3) for v in vals]}")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
EOF
