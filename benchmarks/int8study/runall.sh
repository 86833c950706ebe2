#!/bin/sh
# Final runs: quality + 3 rounds x 10 s of interleaved batch-1 timing at 1 and 2 threads, per model folder.
export PYTHONPATH=/work/wt-int8-pkg OMP_WAIT_POLICY=PASSIVE
PY="nice -n 10 /work/main/.venv/bin/python"
D=$(dirname "$0")  # run from the scratch folder that holds m/, lite0-96/ and b0-96/
uptime
$PY $D/measure.py m/mx-64 10 3 mini_xception
HEAD=lite0-96/head.infh $PY $D/measure.py m/lite0t-96 10 3 efficientnet_lite0
$PY $D/measure.py m/lite0t-224 10 3 efficientnet_lite0
HEAD=b0-96/head.infh $PY $D/measure.py m/b0t-96 10 3 efficientnet_b0
$PY $D/measure.py m/b0t-224 10 3 efficientnet_b0
uptime
