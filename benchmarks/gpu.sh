#!/usr/bin/env bash
# The GPU check: one script, from a fresh checkout, every result written to one folder.
#
#   benchmarks/gpu.sh                          # installs with make, then runs on CUDA (< 8 min on one H100)
#   benchmarks/gpu.sh --device cpu --quick     # the same steps, small and uncompiled, on the CPU (a few minutes)
#
# Options: --out DIR (default runs/gpu-check), --data CIFAR10_ARCHIVE (the shared training split),
# --cifar-budget SECONDS (default 300), --compare LIBS (the peers timed, default timm,hf,torchvision),
# --repeats N (bench rounds at least, default 5), --no-install (use `python3` with PYTHONPATH=src:
# machines without a network; $PYTHON names the interpreter), --no-record (no record appended; --quick
# appends none either). It runs, in order:
#   1. the tests that take a device (fast paths, a training step, resume, timm as the oracle) there;
#   2. vitkit bench: ViT-B/16 at 224 px, bf16, batch 256, inference and training, against timm,
#      Hugging Face and torchvision, each eager and compiled, with the fraction of the measured
#      bf16 matmul peak;
#   3. CIFAR-10 from scratch with a time budget, scored on its 5,000 held-out images;
#   4. torchrun with one process (NCCL beside gloo on a GPU): the multi-process path;
# then appends their figures as one record to benchmarks/results/gpu.jsonl (benchmarks/gpu_record.py).
set -uo pipefail
command="benchmarks/gpu.sh $*"
cd "$(dirname "$0")/.."
device=cuda quick=0 out=runs/gpu-check install=1 budget=300 peers=timm,hf,torchvision repeats=5 record=1
data=../shared/data/cifar10/cifar10-train-jpg.tar.gz
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --cifar-budget) budget=$2; shift 2 ;;
    --compare) peers=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    --no-record) record=0; shift ;;
    *) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$install" = 1 ]; then
  make .venv/.installed-test >/dev/null || exit 1
  py=.venv/bin/python
else
  py=${PYTHON:-python3}
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$out"
failed=0
step() {  # step NAME COMMAND...: run it, keep its output, note a failure and go on
  local name=$1; shift
  echo "== $name: $*" | tee -a "$out/summary.txt"
  local start=$SECONDS
  if "$@" >"$out/$name.txt" 2>&1; then
    echo "   ok in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
  else
    echo "   FAILED in $((SECONDS - start)) s (see $out/$name.txt)" | tee -a "$out/summary.txt"
    failed=1
  fi
}

if [ "$quick" = 1 ]; then  # the same steps, small: a check that the script works, not a measurement
  model=(--model vit_ti16 --image-size 32 --batch 4 --repeats 1)
  compile=()
  tests=(tests/train/test_devices.py -k "$device")
  cifar=(digits --time-budget 15)
else
  model=(--model vit_b16 --batch 256 --repeats "$repeats")
  compile=(--compile)
  tests=(tests/train/test_devices.py tests/model/test_fast.py -k "$device")
  cifar=("$data" --time-budget "$budget")
fi

"$py" -c "import sys, torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'no GPU', file=sys.stderr)" 2>"$out/machine.txt"
step tests "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
step bench-infer "$py" -m vitkit bench "${model[@]}" --device "$device" --dtype bf16 --mode infer \
  --compare "$peers" "${compile[@]}" --json
step bench-train "$py" -m vitkit bench "${model[@]}" --device "$device" --dtype bf16 --mode train \
  --compare "$peers" "${compile[@]}" --json
step cifar "$py" -m vitkit train "${cifar[@]}" --device "$device" --out "$out/cifar-run" --json
step torchrun "$py" -m torch.distributed.run --standalone --nproc-per-node 1 -m vitkit train digits \
  --epochs 1 --device "$device" --out "$out/torchrun-run" --json
if [ "$quick" = 0 ] && [ "$record" = 1 ]; then
  "$py" benchmarks/gpu_record.py "$out" "$command" || failed=1
fi
echo "results in $out" | tee -a "$out/summary.txt"
exit $failed
