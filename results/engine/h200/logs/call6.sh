CALL=call6; source .carry/run/env.sh
step 100 python3 -m lychee_bench.methods.path_check --methods 'full,lychee,lychee[granularity=token],tidal,duo' --ctx 8191 --batch 3 --out $R/path_check.csv
step 100 python3 -m lychee_bench.harness.engine_check --methods 'full,lychee,lychee[granularity=token],tidal' --ctx 3000 --new-tokens 12 --out $R/check
