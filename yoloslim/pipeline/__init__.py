"""The staged, cached pipeline behind slim.py and the benchmarks."""
