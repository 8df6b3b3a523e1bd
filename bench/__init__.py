"""bench/: benchmarks that print tables (and the peers they compare against, bench/peers/).

A package so that scripts share code by import (`python -m bench.compare`); the others also run
as `python bench/NAME.py` with slm installed. Not installed with slm."""
