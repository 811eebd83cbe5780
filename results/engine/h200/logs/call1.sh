CALL=call1; source .carry/run/env.sh
cp .carry/a/smol.part00 /tmp/w/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/a/*.whl
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee $R/gpu.txt
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a $R/gpu.txt
step 170 python3 -m lychee_bench.harness.engine_check --out $R/check
step 90 python3 -m lychee_bench.kernels.bench_select --out $R/select
step 260 python3 -m lychee_bench.cli bench --methods 'full,full[path=reference],lychee,lychee[granularity=token]' --ctx 131072 --batch 1,4 --budget 4096 --reps 20 --out $R/lat8b
