"""The benchmarks (``python -m benchmarks.run``, or ``scripts/dev bench``): a package, so they import
``scripts`` and each other from the repository root without ``sys.path`` edits. The worker
scripts they start in other environments (b4_worker.py, bench_models.py ...) run as files.
"""
