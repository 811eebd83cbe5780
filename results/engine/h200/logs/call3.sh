CALL=call3; source .carry/run/env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/c/*.whl
step 100 python3 .carry/run/warm_samples.py 131072 2
step 130 python3 -m lychee_bench.tasks.latency.versus_transformers --model smollm2-135m --rope-scaling yarn:16 --ctx 131072 --batch 2 --methods full,lychee --out $R/versus128
step 260 python3 -m lychee_bench.cli run --method full,lychee --task ruler --ctx 131072 --samples 2 --rope-scaling yarn:16 --out $R/head128
