"""ggml's CPU plugins: which one fits this machine, and the proof that it runs (issue 14).

Nothing here runs at import time.
"""
