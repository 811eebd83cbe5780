# Developers' tool: sourced on the GPU machine at the start of a device `run` command (carry .carry/remote.sh and
# what the call needs):   source .carry/remote.sh; lb_setup; ...
# Files under /tmp there survive between calls while the machine stays warm.
export PYTHONUNBUFFERED=1 LYCHEE_BENCH_CACHE=/tmp/lbcache PYTHONPATH=/tmp/site:$PWD
export LYCHEE_BENCH_COMMIT=${LYCHEE_BENCH_COMMIT:-$(cat .carry/commit 2>/dev/null || echo unknown)}

lb_setup() {  # the carried wheels, once per machine (carry .carry/w)
  [ -f /tmp/site/.done ] && return
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/w/*.whl
  touch /tmp/site/.done
}

lb_piece() {  # append GGUF piece NN (carry .carry/q/qNN), in order; a piece already taken is not taken twice
  local n=$((10#$1)) done
  done=$(cat /tmp/qwen.pieces 2>/dev/null || echo -1)
  if [ "$n" -le "$done" ]; then echo "piece $n already in"; return; fi
  [ "$n" -eq $((done + 1)) ] || { echo "piece $n out of order (have up to $done)"; return 1; }
  cat ".carry/q/q$(printf %02d "$n")" >> /tmp/qwen.gguf && echo "$n" > /tmp/qwen.pieces && ls -la /tmp/qwen.gguf
}

lb_qwen() {  # the assembled GGUF, checked, where lychee-bench looks for it (then `resolve_model` converts it)
  local target=$LYCHEE_BENCH_CACHE/gguf/qwen2.5-coder-0.5b-instruct.gguf
  [ -f "$target" ] && return
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  /tmp/qwen.gguf" | sha256sum -c - || return 1
  mkdir -p "$(dirname "$target")" && mv /tmp/qwen.gguf "$target"
}

lb_samples() {  # RULER samples generated here beforehand (carry .carry/s.tar.xz: a tar of samples/ruler/ files and
  # their manifest from this machine's cache), so a run on that machine does not spend its minutes generating them
  mkdir -p "$LYCHEE_BENCH_CACHE" && tar xf .carry/s.tar.xz -C "$LYCHEE_BENCH_CACHE" && ls "$LYCHEE_BENCH_CACHE/samples/ruler" | wc -l
}
