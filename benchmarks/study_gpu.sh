#!/usr/bin/env bash
# Issue 9's GPU deliverable in one device call (planned < 9.5 min on one H100; each stage is time-boxed so the
# report always runs):
#   1. sweep qwen2.5-0.5b, mamba2-780m, llama-3.2-1b, mamba2-1.3b, falcon-h1-1.5b (eager, bf16, triton
#      kernels) at 1k..57k with the operator breakdown (--profile ops), energy and roofline fields;
#   2. max context at 24 GiB, full and chunked prefill, 32k..128k (one worker per model serves both modes;
#      --no-confirm: on CUDA a failed probe leaves nothing behind, the worker empties the allocator's cache);
#   3. `edgeports report --study` for the pairs qwen2.5-0.5b vs mamba2-780m and llama-3.2-1b vs mamba2-1.3b
#      vs falcon-h1-1.5b, then print its tables.
# Device call (carry [".whl"] for gpu_setup.sh's wheels):
#   source benchmarks/gpu_setup.sh && bash benchmarks/study_gpu.sh
# Results land in $OUT (the device machine's returned folder) or results/study.
set -uo pipefail
OUT=${OUT:-results/study}
DB=${DB:-$OUT/study.db}
STAGES=${STAGES:-sweep,maxctx,report}  # a subset splits the work over calls (keep DB outside $OUT then)
MODELS=${MODELS:-qwen2.5-0.5b,mamba2-780m,llama-3.2-1b,mamba2-1.3b,falcon-h1-1.5b}
PAIRS=${PAIRS:-qwen2.5-0.5b:mamba2-780m,llama-3.2-1b:mamba2-1.3b:falcon-h1-1.5b}
LENS=${LENS:-1k,4k,8k,16k,32k,57k}
MAXCTX=${MAXCTX:---start 32k --max-len 128k}  # (a CPU dry run: MODELS=tiny-llama,tiny-mamba2 PAIRS=... etc.)
# energy windows of >= 3 counter updates (NVML updates every ~tens of ms): coarser, but a few s per cell less
export EDGEPORTS_ENERGY_UPDATES=${EDGEPORTS_ENERGY_UPDATES:-3}
mkdir -p "$OUT" "$(dirname "$DB")"
start=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - start )) s"; }

stage() { [[ ",$STAGES," == *",$1,"* ]]; }
stamp "sweep"
stage sweep && {
# SIGINT at the time box: finished rows are kept, the worker is killed (a rerun resumes)
timeout -s INT 300 edgeports run --models "$MODELS" --backend eager --lens "$LENS" \
  --decode-len 16 --repeats 2 --warmup 1 --profile ops --timeout 120 --load-timeout 180 --db "$DB" --no-progress
}

stamp "maxctx"
stage maxctx && timeout -s INT 190 edgeports maxctx --models "$MODELS" --backend eager --mem-budget 24GiB \
  --prefill full,chunk:4096 --decode 16 $MAXCTX --resolution 0.125 --no-confirm \
  --timeout 90 --load-timeout 180 --db "$DB"

stamp "report"
stage report || exit 0
edgeports report --study --db "$DB" --out "$OUT" --pairs "$PAIRS"
edgeports report --db "$DB" --out "$OUT/report" --baseline none --no-plots >/dev/null
cat "$OUT/study.md"
# the longest kernels of each category, as profiled (evidence for the categorisation)
python3 - "$DB" <<'EOF'
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
q = ("SELECT r.model, r.prompt_len, o.phase, o.category, o.share, o.top FROM ops o JOIN rows r USING (cell_key) "
     "WHERE r.prompt_len IN (SELECT MIN(prompt_len) FROM rows UNION SELECT MAX(prompt_len) FROM rows) "
     "AND o.share >= 0.02 ORDER BY r.model, r.prompt_len, o.phase, o.share DESC")
for model, n, phase, cat, share, top in db.execute(q):
    names = "; ".join(f"{name[:60]} {ms:.3f} ms" for name, ms in json.loads(top or "[]")[:2])
    print(f"{model:15s} {n:>6} {phase:7s} {cat:11s} {share:5.0%}  {names}")
EOF
stamp "done"
