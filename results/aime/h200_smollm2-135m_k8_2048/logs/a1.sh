CALL=a1; source .carry/run/env.sh
cp .carry/p0/smol.part00 /tmp/w/ && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/p0/*.whl && ls -la /tmp/w | tee $R/w.txt
