# Developers' tool: the H200 runs that finish issue 18 (Qwen2.5-Coder-0.5B), sourced on the GPU machine after
# remote.sh, once the GGUF is in place (lb_qwen). Long jobs start in the background (setsid: they outlive the call
# while the machine stays warm), from a copy of the tree in /tmp/lb (the next call's copy of the tree cannot change
# the code under a running job), and write under /tmp/res; `lb_collect` packs what is done into $OUT.
LB="python3 -m lychee_bench.cli"
Q=qwen2.5-coder-0.5b
RUN="$LB run --model $Q --task ruler --samples 25 --seed 42"

lb_bg() {  # lb_bg NAME command...: run in the background, log in /tmp/res/NAME.log, exit code in NAME.rc
  local name=$1
  shift
  mkdir -p /tmp/res
  [ -d /tmp/lb ] || { mkdir /tmp/lb && tar cf - --exclude=./.carry/q --exclude=./.carry/w . | tar xf - -C /tmp/lb; }
  setsid nohup bash -c "cd /tmp/lb; source .carry/remote.sh; $*; echo \$? > /tmp/res/$name.rc" > "/tmp/res/$name.log" 2>&1 \
    < /dev/null &
  echo "started $name"
}

lb_status() {  # what each background job last printed, and which ended
  for log in /tmp/res/*.log; do
    name=$(basename "$log" .log)
    echo "== $name rc=$(cat /tmp/res/$name.rc 2>/dev/null || echo running): $(tail -c 300 "$log" | tr '\r' '\n' | tail -2)"
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

lb_collect() {  # everything under /tmp/res (records, roles, logs) as one archive under $OUT
  tar czf "$OUT/res.tgz" -C /tmp res && ls -la "$OUT"
}

lb_convert() {  # convert the GGUF once (about 106 s on that CPU), so the jobs that follow do not race to do it
  python3 -c "from lychee_bench.harness.models import resolve_model; print(resolve_model('$Q'))"
}

# 1. HardKuma roles trained to the end of their schedule; 2. the budget sweep's lychee entries with the
# continuous-gate roles (same samples as results/qwen2.5-coder-0.5b/sweep_16384).
lb_train() {
  lb_bg train_hk "$LB train-heads --model $Q --retrieval-heads 6 --steps ${STEPS:-2000} --checkpoint-every 50 \
    --time-limit ${TRAIN_MINUTES:-14} --out /tmp/res/train_hk"
}
lb_sweep() {  # one --method option: a comma list (a repeated --method keeps only the last)
  local entries="full" b
  for b in 256 512 1024 2048 4096; do
    [ "$b" -gt 256 ] && entries+=",lychee[roles=$Q-continuous;budget=$b]"
    entries+=",lychee[roles=$Q-continuous;granularity=block;budget=$b]"
  done
  lb_bg sweep "timeout ${SWEEP_SECONDS:-0} $RUN --ctx 16384 --batch-size 32 --method '$entries' \
    --out /tmp/res/sweep_16384_continuous"
}
# 3. The headline: RULER 13 x 10 at 131072 with YaRN x4, full and lychee (continuous-gate roles, token).
lb_headline() {
  lb_bg headline "$LB run --model $Q --task ruler --samples 10 --seed 42 --ctx 131072 --rope-scaling yarn:4 \
    --batch-size ${HEADLINE_BATCH:-16} --budget 16384 --method 'full,lychee[roles=$Q-continuous]' \
    --out /tmp/res/ruler_131072"
}
# 3b. The other methods at 131072 on the same samples (each with the model's shipped artifacts); run in the
# foreground with its records under $OUT, so a call cut short by the device budget still brings back what finished.
lb_headline_baselines() {
  timeout "${SECONDS_LEFT:-465}" $LB run --model $Q --task ruler --samples 10 --seed 42 --ctx 131072 \
    --rope-scaling yarn:4 --batch-size 16 --budget 16384 \
    --method 'quest,tidal,kascade,duo,streaming,lychee[roles=uniform:6]' --out "$OUT/ruler_131072_baselines"
}
# 4. Needle recall per layer of the continuous-gate roles (the best trained roles: where do they lose the needle?).
lb_recall() {
  local methods="'lychee[roles=$Q-continuous],lychee[roles=$Q-continuous;granularity=block]'"
  lb_bg recall "for c in 16384 32768; do python3 -m lychee_bench.tools.needle_recall --model $Q --ctx \$c \
    --samples 2 --steps 2 --budget \$((c / 8)) --method $methods --out /tmp/res/recall_\${c}_continuous; done"
}
# 5. started with the others, it waits for the training's exit code, then runs lb_trained.
lb_after_training() {
  lb_bg trained "while [ ! -f /tmp/res/train_hk.rc ]; do sleep 5; done; source dev/device/issue18_runs.sh; lb_trained"
}
# RULER with the newly trained HardKuma roles, budget 1/8: token first (16384, 32768, 8192), then block, then
# their needle recall.
lb_trained() {
  local roles=/tmp/res/train_hk/roles.json c
  for c in 16384 32768 8192; do
    $RUN --ctx $c --batch-size 16 --budget $((c / 8)) --method "lychee[roles=$roles]" \
      --out /tmp/res/ruler_${c}_hardkuma || return
  done
  for c in 16384 32768; do
    $RUN --ctx $c --batch-size 16 --budget $((c / 8)) --method "lychee[roles=$roles;granularity=block]" \
      --out /tmp/res/ruler_${c}_hardkuma_block || return
  done
  python3 -m lychee_bench.tools.needle_recall --model $Q --ctx 16384 --samples 2 --steps 2 --budget 2048 \
    --method "lychee[roles=$roles]" --out /tmp/res/recall_16384_hardkuma
}
