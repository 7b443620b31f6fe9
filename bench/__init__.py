"""Benchmarks and the soak run: they measure and print, they never pass or fail on speed.

`python bench/run.py` (`make bench`) runs every benchmark against a real server and a
real mock backend, each in its own process; `python bench/soak.py` (`make soak`) runs
sessions for minutes and watches memory and file descriptors. See docs/performance.md.
"""
