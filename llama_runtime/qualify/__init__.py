"""Qualification of the binaries we build and publish (issue 14, point 3; issue 15, point 2).

Every CPU plugin of a variant runs on its own, in a child process, on a tiny model in every
quantization type users run, natively and under qemu where qemu can, and its greedy tokens are
compared with a reference within a stated tolerance (:mod:`.rule`). ``check.qualify_folders``
is what ``scripts/build_variants.py`` and ``llama-runtime publish`` call. Nothing here runs at
import time.
"""
