"""Benchmarks, one script per figure; run each as `python -m bench.<name>`."""
