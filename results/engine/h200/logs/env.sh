# sourced by every call: carried wheels on PYTHONPATH, caches in /tmp (kept while the machine is warm);
# `step SECONDS CMD...` runs one step with a time limit, logs it, and packs /tmp/res/$CALL into $OUT after each step
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 LYCHEE_BENCH_CACHE=/tmp/lbcache TOKENIZERS_PARALLELISM=false
export LYCHEE_BENCH_COMMIT=$(cat $PWD/.carry/run/commit)
mkdir -p /tmp/w /tmp/site /tmp/lbcache
R=/tmp/res/$CALL; mkdir -p $R; L=$R/log.txt
step() {
  echo "=== $(date +%T) ${*:2}" | tee -a $L
  local t0=$(date +%s)
  timeout $1 "${@:2}" >> $L 2>&1
  local code=$?
  tail -n 12 $L | grep -v "^===" | cut -c1-220
  echo "=== exit $code in $(( $(date +%s) - t0 )) s" | tee -a $L
  tar -C $R -czf $OUT/$CALL.tgz .
}
