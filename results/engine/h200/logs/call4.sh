CALL=call4; source .carry/run/env.sh
step 60 python3 .carry/run/warm_samples.py 32768 2
step 90 python3 -m lychee_bench.tasks.latency.versus_transformers --model smollm2-135m --rope-scaling yarn:4 --ctx 32768 --batch 8 --methods full,lychee --out $R/versus32
step 90 python3 -m lychee_bench.cli run --method full,lychee --task ruler --ctx 32768 --samples 2 --rope-scaling yarn:4 --out $R/run32
step 60 python3 .carry/run/warm_samples.py 4096 25
step 120 python3 -m lychee_bench.cli run --method full,lychee --task ruler --ctx 4096 --samples 25 --batch-size 65 --out $R/new4096
cd .carry/old && step 200 env PYTHONPATH=/tmp/site LYCHEE_BENCH_COMMIT=8933740 python3 -m lychee_bench.cli run --method full,lychee --task ruler --ctx 4096 --samples 25 --batch-size 65 --out $R/old4096
