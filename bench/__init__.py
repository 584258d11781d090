"""`make bench`: ratio-cnn's pipeline against a plain baseline, written to docs/benchmarks.md.

    run.py       the entry point (`python -m bench.run [--quick]`): every part in one run
    naive.py     the baseline, in the original study's style
    measure.py   one function per measured configuration, each run in its own process
    isolated.py  runs such a function in a fresh process and reads its peak memory
    datasets.py  the synthetic datasets (1x, 4x, 16x) and the local moto S3 server
    targets.py   the issue's targets, and the ratio reached against each
    docs.py      docs/benchmarks.md from bench/results/*.json
    gpu.py       the GPU part, one prepared script (`python -m bench.gpu`)
"""
