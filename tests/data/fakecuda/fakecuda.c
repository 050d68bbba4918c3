/* A fake NVIDIA driver (libcuda) for tests: values come from the environment.
 *   FAKECUDA_VERSION=12040   cuDriverGetVersion
 *   FAKECUDA_COUNT=2         cuDeviceGetCount
 *   FAKECUDA_CC=8.6          compute capability (attributes 75/76)
 *   FAKECUDA_NAME=...        cuDeviceGetName (device index appended when COUNT > 1)
 *   FAKECUDA_MEM_MIB=24576   cuDeviceTotalMem_v2
 *   FAKECUDA_HANG=1          cuInit never returns (a wedged driver)
 *   FAKECUDA_INIT_ERROR=100  cuInit fails with that code (100 = CUDA_ERROR_NO_DEVICE)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v ? atoi(v) : fallback;
}

int cuInit(unsigned int flags) {
    (void)flags;
    if (env_int("FAKECUDA_HANG", 0))
        for (;;) sleep(1000);
    return env_int("FAKECUDA_INIT_ERROR", 0);
}

int cuDriverGetVersion(int *version) {
    *version = env_int("FAKECUDA_VERSION", 12040);
    return 0;
}

int cuDeviceGetCount(int *count) {
    *count = env_int("FAKECUDA_COUNT", 1);
    return 0;
}

int cuDeviceGet(int *device, int ordinal) {
    if (ordinal < 0 || ordinal >= env_int("FAKECUDA_COUNT", 1)) return 101; /* INVALID_DEVICE */
    *device = ordinal;
    return 0;
}

int cuDeviceGetAttribute(int *value, int attribute, int device) {
    const char *cc = getenv("FAKECUDA_CC");
    int major = 8, minor = 6;
    (void)device;
    if (cc) sscanf(cc, "%d.%d", &major, &minor);
    if (attribute == 75) { *value = major; return 0; }
    if (attribute == 76) { *value = minor; return 0; }
    return 1; /* CUDA_ERROR_INVALID_VALUE */
}

int cuDeviceGetName(char *name, int len, int device) {
    const char *base = getenv("FAKECUDA_NAME");
    if (!base) base = "NVIDIA GeForce RTX 3090";
    if (env_int("FAKECUDA_COUNT", 1) > 1)
        snprintf(name, (size_t)len, "%s #%d", base, device);
    else
        snprintf(name, (size_t)len, "%s", base);
    return 0;
}

int cuDeviceTotalMem_v2(size_t *bytes, int device) {
    (void)device;
    *bytes = (size_t)env_int("FAKECUDA_MEM_MIB", 24576) * 1024 * 1024;
    return 0;
}
