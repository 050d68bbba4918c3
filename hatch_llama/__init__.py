"""In-tree PEP 517 backend and Hatch build hook for llama-runtime (kept thin)."""
