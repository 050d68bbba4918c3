# Cross-compile for Windows x86_64 with Debian's MinGW-w64 (g++-mingw-w64-x86-64).
# The posix thread model: ggml and llama use std::thread/std::mutex, which the win32 model of
# GCC 12 lacks. Its runtime (libgcc, libstdc++, winpthread) is linked statically (-static),
# so the DLLs need only what every Windows has (KERNEL32, msvcrt, ...).
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR AMD64)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc-posix)
set(CMAKE_CXX_COMPILER x86_64-w64-mingw32-g++-posix)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# ggml's GGML_API is a visibility attribute under MinGW (no dllexport), so ld exports every
# symbol of a DLL, the static runtime's too (_Unwind_Resume, pthread_once): a DLL linking
# ggml-base.dll then sees them twice. --exclude-libs keeps the runtime archives' symbols private
# (not ALL: CMake links a DLL's own objects from an objects.a archive).
set(_runtime "libgcc.a:libgcc_eh.a:libstdc++.a:libwinpthread.a:libpthread.a:libgomp.a")
string(APPEND _runtime ":libmingwex.a:libmingw32.a:libmoldname.a:libssp.a")
# -s: the static runtime archives carry DWARF and a COFF symbol table (7.5 -> 4.5 MB for llama.dll)
set(_static "-static -static-libgcc -static-libstdc++ -Wl,--exclude-libs,${_runtime} -s")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_static}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_static}")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "${_static}")
# Declarations Debian's mingw-w64 10 headers lack (see the header for which and why).
set(_compat "-include ${CMAKE_CURRENT_LIST_DIR}/mingw-w64-compat.h")
set(CMAKE_C_FLAGS_INIT "${_compat}")
set(CMAKE_CXX_FLAGS_INIT "${_compat}")
set(CMAKE_USER_MAKE_RULES_OVERRIDE "${CMAKE_CURRENT_LIST_DIR}/mingw-w64-names.cmake")
