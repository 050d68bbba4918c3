"""Development tools of llama-runtime: variant builders, the loopback hub, the demo.

A package so that tests, benchmarks and the demo import it from the repository root
(``python -m scripts.demo``, ``from scripts import build_variants``) without ``sys.path`` edits.
Never shipped: the sdist includes only ``llama_runtime``, ``hatch_llama``, README.md and
pyproject.toml, the wheel only ``llama_runtime`` (pyproject.toml, tests/e2e/test_checkout.py).
"""
