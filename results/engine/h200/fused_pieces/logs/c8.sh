CALL=c8; source .carry/run/env.sh
cp .carry/p0/smol.part00 /tmp/w/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/p0/*.whl
step 170 python3 -m lychee_bench.harness.engine_check --methods 'full,lychee' --new-tokens 8 --out $R/check
step 150 python3 -m lychee_bench.cli bench --model qwen3-8b-synthetic --methods 'full,lychee,lychee[granularity=token]' --ctx 131072 --batch 1,4 --budget 4096 --reps 20 --no-stock --no-attention --out $R/lat
