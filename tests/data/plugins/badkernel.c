/* A ggml CPU plugin that crashes the way a bad kernel does (issue 14's AMX SIGILL), for tests.
 *
 * It scores itself above every real plugin, so ggml_backend_load_all_from_path picks it. Its
 * ggml_backend_init hands out the registry of a real plugin beside it (REAL, e.g.
 * libggml-cpu-skylakex.so), with the device's init_backend wrapped: every backend it makes runs
 * __builtin_trap() (ud2, "Illegal instruction", SIGILL) on its first graph_compute, i.e. on the
 * first decode. Built with -DCRASH_AT_INIT it traps in ggml_backend_init already.
 * Built with -DWRONG_LOGITS=1 it does not crash but computes wrong: after the real graph_compute
 * it shifts each row of the logits (the "result_output" tensor) by one token, an off-by-one in
 * an index, so every greedy token changes; -DWRONG_LOGITS=2 multiplies them by 3 instead (every
 * argmax stays, every top-2 margin triples). The qualification must refuse both (issue 14.3).
 *
 *   cc -shared -fPIC -O1 -I ggml/include -I ggml/src -DREAL='"libggml-cpu-skylakex.so"' \
 *      badkernel.c -o libggml-cpu-badkernel.so -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "ggml-backend-impl.h"
#ifdef WRONG_LOGITS
#include "ggml-impl.h"
#endif

#define EXPORT __attribute__((visibility("default")))

static ggml_backend_t (*real_init_backend)(ggml_backend_dev_t dev, const char * params);

static enum ggml_status trap_compute(ggml_backend_t backend, struct ggml_cgraph * cgraph) {
    (void) backend; (void) cgraph;
    __builtin_trap();
}

#ifdef WRONG_LOGITS
static enum ggml_status (*real_compute)(ggml_backend_t backend, struct ggml_cgraph * cgraph);

static enum ggml_status wrong_compute(ggml_backend_t backend, struct ggml_cgraph * cgraph) {
    enum ggml_status status = real_compute(backend, cgraph);
    /* struct ggml_cgraph from ggml-impl.h: a plugin cannot call libggml-base (ggml dlopens it RTLD_LOCAL) */
    struct ggml_tensor * out = cgraph->nodes[cgraph->n_nodes - 1];
    if (status != GGML_STATUS_SUCCESS || out->type != GGML_TYPE_F32 || strcmp(out->name, "result_output") != 0) {
        return status;
    }
    const int64_t n = out->ne[0];
    for (int64_t r = 0; r < out->ne[1] * out->ne[2] * out->ne[3]; r++) {
        float * row = (float *) out->data + r * n;
#if WRONG_LOGITS == 1
        float first = row[0];
        memmove(row, row + 1, sizeof(float) * (size_t) (n - 1));
        row[n - 1] = first;
#else
        for (int64_t i = 0; i < n; i++) {
            row[i] *= 3.0f;
        }
#endif
    }
    return status;
}
#endif

static ggml_backend_t wrapped_init_backend(ggml_backend_dev_t dev, const char * params) {
    ggml_backend_t backend = real_init_backend(dev, params);
    if (backend) {
#ifdef WRONG_LOGITS
        real_compute = backend->iface.graph_compute;
        backend->iface.graph_compute = wrong_compute;
#else
        backend->iface.graph_compute = trap_compute;
#endif
    }
    return backend;
}

EXPORT int ggml_backend_score(void) {
    return 1 << 20;  /* above any real x86 plugin (sapphirerapids: 4031) */
}

EXPORT ggml_backend_reg_t ggml_backend_init(void) {
#ifdef CRASH_AT_INIT
    __builtin_trap();
#endif
    Dl_info self;
    char path[4096];
    if (!dladdr((void *) ggml_backend_score, &self) || strlen(self.dli_fname) + sizeof(REAL) >= sizeof(path)) {
        return NULL;
    }
    strcpy(path, self.dli_fname);
    char * slash = strrchr(path, '/');
    strcpy(slash ? slash + 1 : path, REAL);
    void * real = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ggml_backend_init_t init = real ? (ggml_backend_init_t) dlsym(real, "ggml_backend_init") : NULL;
    ggml_backend_reg_t reg = init ? init() : NULL;
    if (!reg) {
        fprintf(stderr, "badkernel: cannot load %s: %s\n", path, dlerror());
        return NULL;
    }
    ggml_backend_dev_t dev = reg->iface.get_device(reg, 0);
    real_init_backend = dev->iface.init_backend;
    dev->iface.init_backend = wrapped_init_backend;  /* the real registry, one slot changed */
    return reg;
}
