CALL=call5; source .carry/run/env.sh
step 60 python3 .carry/run/warm_samples.py 131072 1
step 420 python3 -m lychee_bench.cli run --model llama3-8b-synthetic --tokenizer smollm2-135m --method full,lychee --roles uniform:32 --task ruler --ctx 131072 --samples 1 --out $R/synth128
