"""Side-by-side benchmarks: the same workloads on ferroloop, asyncio, uvloop and peer loops.

Run `python -m bench` from the repository root; see bench/README.md.
"""
