"""Readers of binaries, no builds: ELF (elf.py), PE (pe_facts.py), Mach-O (macho.py), CUDA fatbins
(cuda_fatbin.py) and the AMX tile configuration of a ggml plugin (amx_tilecfg.py); the load
order all three formats share (order.py)."""
