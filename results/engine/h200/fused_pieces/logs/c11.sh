CALL=c11; source .carry/run/env.sh
step 170 python3 -m lychee_bench.harness.engine_check --methods 'full,lychee' --new-tokens 8 --out $R/check
B="bench --methods full,lychee,lychee[granularity=token] --ctx 131072 --batch 1 --budget 4096 --reps 30 --no-stock --no-attention"
step 100 python3 -m lychee_bench.cli $B --out $R/ab_new1
(cd .carry/ab && step 100 env PYTHONPATH=$PWD:/tmp/site LYCHEE_BENCH_COMMIT=12e7fc5 python3 -m lychee_bench.cli $B --out $R/ab_old)
step 100 python3 -m lychee_bench.cli $B --out $R/ab_new2
