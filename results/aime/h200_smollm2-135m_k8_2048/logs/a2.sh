CALL=a2; source .carry/run/env.sh
cp .carry/p1/smol.part01 /tmp/w/ && ls -la /tmp/w | tee $R/w.txt
