/* Forced into every compile of the MinGW-w64 cross build (-include, see mingw-w64-x86_64.cmake).
 *
 * llama.cpp's ggml-cpu.c opts its threads out of Windows 11 power throttling (core parking puts
 * every thread on a few cores otherwise) with THREAD_POWER_THROTTLING_STATE, which the Windows
 * SDK declares in processthreadsapi.h. Debian 12's mingw-w64 10 headers have the
 * ThreadPowerThrottling enum value but not the struct; later mingw-w64 releases declare it
 * (then this file adds nothing). Layout and values as in the Windows SDK. */
#ifndef LLAMA_RUNTIME_MINGW_COMPAT_H
#define LLAMA_RUNTIME_MINGW_COMPAT_H
#ifdef _WIN32
#include <_mingw.h>
#if __MINGW64_VERSION_MAJOR < 11 && !defined(THREAD_POWER_THROTTLING_CURRENT_VERSION)
typedef struct _THREAD_POWER_THROTTLING_STATE {
    unsigned long Version;
    unsigned long ControlMask;
    unsigned long StateMask;
} THREAD_POWER_THROTTLING_STATE;
#define THREAD_POWER_THROTTLING_CURRENT_VERSION 1
#define THREAD_POWER_THROTTLING_EXECUTION_SPEED 0x1
#endif
/* The sapphirerapids plugin (-mamx-tile): GCC 12's amxtileintrin.h passes the tile stride as
 * (long), which is 32 bits on 64-bit Windows, so tileloadd/tilestored get a 32-bit index
 * register and the assembler refuses them ("(%rbp,%r15d,1) is not a valid base/index
 * expression"). The same macros with a pointer-sized stride, as on every LP64 target. */
#if defined(_WIN64) && defined(__AMX_TILE__)
#include <immintrin.h>
#undef _tile_loadd_internal
#define _tile_loadd_internal(dst, base, stride) __asm__ volatile \
    ("{tileloadd\t(%0,%1,1), %%tmm"#dst"|tileloadd\t%%tmm"#dst", [%0+%1*1]}" \
     :: "r" ((const void *) (base)), "r" ((__PTRDIFF_TYPE__) (stride)))
#undef _tile_stream_loadd_internal
#define _tile_stream_loadd_internal(dst, base, stride) __asm__ volatile \
    ("{tileloaddt1\t(%0,%1,1), %%tmm"#dst"|tileloaddt1\t%%tmm"#dst", [%0+%1*1]}" \
     :: "r" ((const void *) (base)), "r" ((__PTRDIFF_TYPE__) (stride)))
#undef _tile_stored_internal
#define _tile_stored_internal(src, base, stride) __asm__ volatile \
    ("{tilestored\t%%tmm"#src", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm"#src"}" \
     :: "r" ((void *) (base)), "r" ((__PTRDIFF_TYPE__) (stride)) : "memory")
#endif
#endif
#endif
