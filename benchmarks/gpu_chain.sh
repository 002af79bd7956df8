#!/usr/bin/env bash
# The backend benchmarks of issues 5 and 6 in five consecutive device calls that also bring onnxruntime-gpu
# over, one part per call (../shared/tools/ort-gpu-parts.sh writes .ort1 .. .ort5; a call carries 64 MiB).
# Each call must start within ~30 s of the last one's end, so the machine stays warm and /tmp survives:
#   call i (1..5): carry [".ort<i>"], command: bash benchmarks/gpu_chain.sh <i>
# fp16 throughout (ONNX Runtime's CUDA EP covers fp16 far better than bf16). What each step does:
#   1. in the background: every export and JIT compile the benchmarks need (backends.py --jobs, kept in
#      /tmp/bw); in the foreground meanwhile: the GPU tests (TESTS, default all; correctness only, so they
#      may share the machine)
#   2. wait for the preparing workers, print their outcome
#   3. issue 5's table: eager vs compile-jit vs compile-aot, the machine otherwise idle (the prepared
#      artifacts serve any subset: MODELS=mamba-2.8b for one model per call)
#   4. the part; where does a JIT decode step go (benchmarks/decode_profile.py on PROFILE_MODELS, default the
#      two SSMs); and (when results/prev/study.db is carried: carry [".ort4", "results/prev"]) a search of
#      issue 9's store given in MAXCTX_MODELS (default mamba2-1.3b) again, full prefill at 24 GiB up to 512k
#   5. install onnxruntime-gpu; issue 6's table: eager vs ort-cuda (standard lowering) vs ort-cuda-gqa
#      (attention as GroupQueryAttention; llama only) vs ort-cuda-custom (SSM ops as ai.edgeports nodes on
#      edgeports' CUDA kernels; SSM models only; the custom-op library is built with nvcc there, which needs
#      ONNX Runtime's headers: carry a directory of them and set ONNXRUNTIME_INCLUDE, no registry there)
# MODELS (default the three of the issues) picks the benchmarked models: three models' embedded-weight AOT
# packages and ONNX exports filled the 64 GiB disk once. AOT_WEIGHTS sets the packages' weights mode.
# About 20 minutes held in all (2026-11-22, H100). The study of issue 9 is one call of its own:
#   source benchmarks/gpu_setup.sh && bash benchmarks/study_gpu.sh
set -uo pipefail
step=${1:?usage: gpu_chain.sh STEP (1..5)}
OUT=${OUT:-/tmp/chain-out}
mkdir -p /tmp/parts "$OUT" && cp .ort"$step"/ortpart.* /tmp/parts/
source benchmarks/gpu_setup.sh >/dev/null
BENCH=(python3 benchmarks/backends.py --models "${MODELS:-llama-3.2-1b,mamba2-2.7b,mamba-2.8b}" --dtype float16
       --lens 1k,4k,16k,64k --decode-lens 1k,16k --repeats 2 --workdir /tmp/bw --aot-weights "${AOT_WEIGHTS:-auto}")
# the workers' logs as one file: a call brings back at most 8 files (the table's JSON was left out once)
# shellcheck disable=SC2086 # $2 is a glob, expanded inside /tmp/bw
keep_logs() { (cd /tmp/bw && tar -czf "$OUT/$1-logs.tgz" $2) 2>/dev/null || true; }
prep_running() { pgrep -f -- "--prepare-only" >/dev/null; }
wait_for_prep() { for _ in $(seq "${1:-110}"); do prep_running || break; sleep 5; done; }
# drop warnings and traced-shape debug lines, but keep pytest's count line ("1 failed, 60 passed, 9 warnings in ...")
quiet() { awk '/ passed| failed/ || !(/[Ww]arn|^DEBUG|return cls.__new__|ScatterND/)' || true; }

case $step in
1)
  setsid nohup "${BENCH[@]}" --backends eager,compile-jit,compile-aot,ort-cuda,ort-cuda-gqa,ort-cuda-custom --jobs 5 \
    --prepare-only \
    >/tmp/prep.log 2>&1 </dev/null &
  # shellcheck disable=SC2086 # TESTS is a list of paths
  timeout 500 python3 -m pytest -m gpu -q -rfE --tb=line -p no:cacheprovider -p no:logging ${TESTS:-tests} 2>&1 \
    | quiet | tail -30
  ;;
2)
  wait_for_prep
  grep -E "^prepared" /tmp/prep.log; df -h /tmp | tail -1  # 2026-11-22: the 64 GiB disk filled up (ENOSPC)
  prep_running && echo "prep still running"
  cp /tmp/prep.log "$OUT"/ 2>/dev/null; keep_logs prep 'prep-*.log'
  ;;
3)
  wait_for_prep 24  # (at most 2 minutes) a step 3 right after step 1 waits for the exports here
  timeout 560 "${BENCH[@]}" --backends eager,compile-jit,compile-aot --budget-s 430 --out "$OUT/compile.json" 2>&1 \
    | quiet | tail -45
  keep_logs compile 'measure-*compile*.log'
  ;;
4)
  echo "part 4 copied"; df -h /tmp | tail -1
  timeout 420 python3 benchmarks/decode_profile.py ${PROFILE_MODELS:-mamba2-2.7b mamba-2.8b} --dtype float16 \
    --out "$OUT/decode_profile.json" 2>&1 | quiet | tail -60
  if [ -f results/prev/study.db ]; then
    timeout -s INT 500 edgeports maxctx --models "${MAXCTX_MODELS:-mamba2-1.3b}" --backend eager --mem-budget 24GiB \
      --prefill full --decode 16 --start 64k --max-len 512k --resolution 0.125 --no-confirm --force \
      --timeout 90 --load-timeout 120 --db results/prev/study.db 2>&1 | tail -8
    cp results/prev/study.db "$OUT"/study.db
  fi
  ;;
5)
  bash .ort5/install.sh && export PYTHONPATH=/tmp/ortsite${PYTHONPATH:+:$PYTHONPATH}
  # the tests that need onnxruntime-gpu (skipped in step 1, before it was installed)
  timeout 90 python3 -m pytest -m gpu -q -rfE --tb=short -p no:cacheprovider -p no:logging tests/runners/test_ort_budget.py \
    tests/exporters/test_onnx_gqa.py 2>&1 | quiet | tail -15
  # the bool-weight binding against onnxruntime 1.31 itself (CPU tests; their stand-in emulates it elsewhere)
  timeout 60 python3 -m pytest -q --tb=short -p no:cacheprovider -p no:logging tests/runners/test_ort_bool.py 2>&1 \
    | quiet | tail -5
  timeout 540 "${BENCH[@]}" --backends eager,ort-cuda,ort-cuda-gqa,ort-cuda-custom --budget-s 420 --out "$OUT/ort.json" 2>&1 \
    | quiet | tail -45
  keep_logs ort 'measure-*ort*.log'
  ;;
esac
