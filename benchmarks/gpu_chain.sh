#!/usr/bin/env bash
# The GPU runs of issues 5, 6 and 9 in five consecutive device calls that also bring onnxruntime-gpu over,
# one part per call (../shared/tools/ort-gpu-parts.sh writes .ort1 .. .ort5; a call carries 64 MiB at most).
# Each call must start within ~30 s of the last one's end, so the machine stays warm and /tmp survives:
#   call i (1..5): carry [".ort<i>"], command: bash benchmarks/gpu_chain.sh <i>
# What each step does (fp16 throughout: ONNX Runtime's CUDA EP covers fp16 far better than bf16):
#   1. in the background: the exports and JIT compiles of the backend benchmark (--jobs, kept in /tmp/bw) and
#      the compile GPU tests; in the foreground: the max-context search of the study (not a timing, so it
#      may share the machine)
#   2. wait for those workers, print their outcome
#   3. issue 5's table: eager vs compile-jit vs compile-aot (benchmarks/backends.py), machine otherwise idle
#   4. issue 9's sweep with the operator breakdown (benchmarks/study_gpu.sh STAGES=sweep)
#   5. install onnxruntime-gpu; issue 6's table: eager vs ort-cuda (compile's numbers, same dtype and machine,
#      are step 3's); the study report
set -uo pipefail
step=${1:?usage: gpu_chain.sh STEP (1..5)}
OUT=${OUT:-/tmp/chain-out}
mkdir -p /tmp/parts "$OUT" && cp .ort"$step"/ortpart.* /tmp/parts/
source benchmarks/gpu_setup.sh >/dev/null
export STUDY_DB=/tmp/study/study.db
BENCH=(python3 benchmarks/backends.py --models llama-3.2-1b,mamba2-2.7b,mamba-2.8b --dtype float16
       --lens 1k,4k,16k,64k --decode-lens 1k,16k --repeats 2 --workdir /tmp/bw)
quiet() { grep -v -i -E "warn|return cls.__new__" || true; }

case $step in
1)
  setsid nohup "${BENCH[@]}" --backends eager,compile-jit,compile-aot,ort-cuda --jobs 5 --prepare-only \
    >/tmp/prep.log 2>&1 </dev/null &
  setsid nohup timeout 400 python3 -m pytest -m gpu -q -rf --tb=short -p no:cacheprovider \
    tests/runners/test_compile_runner.py >/tmp/pytest-compile.log 2>&1 </dev/null &
  STAGES=maxctx DB=$STUDY_DB OUT=/tmp/study bash benchmarks/study_gpu.sh 2>&1 | quiet | tail -20
  ;;
2)
  for _ in $(seq 110); do pgrep -f -- "--prepare-only" >/dev/null || break; sleep 5; done
  grep -E "^prepared" /tmp/prep.log; pgrep -f -- "--prepare-only" >/dev/null && echo "prep still running"
  echo "-- compile GPU tests"; quiet </tmp/pytest-compile.log | tail -15
  cp /tmp/bw/*.log /tmp/prep.log "$OUT"/ 2>/dev/null
  ;;
3)
  timeout 560 "${BENCH[@]}" --backends eager,compile-jit,compile-aot --budget-s 430 --out "$OUT/compile.json" 2>&1 \
    | quiet | tail -45
  ;;
4)
  STAGES=sweep DB=$STUDY_DB OUT=/tmp/study bash benchmarks/study_gpu.sh 2>&1 | quiet | tail -8
  ;;
5)
  bash .ort5/install.sh && export PYTHONPATH=/tmp/ortsite${PYTHONPATH:+:$PYTHONPATH}
  timeout 400 "${BENCH[@]}" --backends eager,ort-cuda --budget-s 330 --out "$OUT/ort.json" 2>&1 \
    | quiet | tail -40
  STAGES=report DB=$STUDY_DB OUT="$OUT/study" bash benchmarks/study_gpu.sh 2>&1 | quiet | tail -60
  cp "$STUDY_DB" "$OUT/study/"
  ;;
esac
