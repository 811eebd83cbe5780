CALL=c7; source .carry/run/env.sh
cp .carry/p0/smol.part00 /tmp/w/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/p0/*.whl
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee $R/gpu.txt
step 170 python3 -m lychee_bench.harness.engine_check --methods 'full,lychee,lychee[granularity=token],tidal' --out $R/check
step 200 python3 -m lychee_bench.cli bench --methods 'full,lychee,lychee[granularity=token]' --ctx 131072 --batch 1,4 --budget 4096 --reps 20 --profile 3 --no-stock --out $R/lat8b
