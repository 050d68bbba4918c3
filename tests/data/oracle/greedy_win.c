/* greedy.c for Windows, loading libllama the way llama-runtime's loader does (tests/test_windows_build.py).
 *
 * usage: greedy_win FOLDER MODEL PROMPT N_GEN THREADS N_CTX REPS LIBRARY [LIBRARY ...]
 * The LIBRARYs are file names in FOLDER, in the manifest's load order. Like the loader with
 * ctypes on Windows: AddDllDirectory(FOLDER) (os.add_dll_directory), then LoadLibraryExW of each
 * by full path with LOAD_LIBRARY_SEARCH_DEFAULT_DIRS | LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR (what
 * ctypes.CDLL uses), every function by GetProcAddress (no import library is linked), then
 * ggml_backend_load_all_from_path(FOLDER) before llama_backend_init.
 * Prints "log ..." for ggml's plugin scores and the plugin it loaded, "backend NAME" per
 * registered backend, "device NAME | DESCRIPTION" per device, "system_info ...", then per rep
 * "ids <token> ..." and finally "gen_us_per_token <float>" as greedy.c does. Exit 1 on failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#include <windows.h>
#include "llama.h"

#define FUNCTIONS(X) \
    X(llama_log_set) X(ggml_backend_load_all_from_path) X(llama_backend_init) \
    X(llama_backend_free) X(llama_print_system_info) X(ggml_backend_reg_count) \
    X(ggml_backend_reg_get) X(ggml_backend_reg_name) X(ggml_backend_dev_count) \
    X(ggml_backend_dev_get) X(ggml_backend_dev_name) X(ggml_backend_dev_description) \
    X(llama_model_default_params) X(llama_model_load_from_file) X(llama_model_free) \
    X(llama_context_default_params) X(llama_init_from_model) X(llama_free) \
    X(llama_model_get_vocab) X(llama_tokenize) X(llama_memory_clear) X(llama_get_memory) \
    X(llama_sampler_chain_default_params) X(llama_sampler_chain_init) \
    X(llama_sampler_chain_add) X(llama_sampler_init_greedy) X(llama_sampler_sample) \
    X(llama_sampler_free) X(llama_decode) X(llama_batch_get_one) X(llama_vocab_is_eog) \
    X(llama_token_to_piece)
#define DECLARE(name) static __typeof__(&name) p_##name;
FUNCTIONS(DECLARE)

static HMODULE modules[16];
static int n_modules;

static int fail(const char *what) { fprintf(stderr, "greedy_win: %s\n", what); return 1; }

static void *find(const char *name) {
    for (int i = n_modules - 1; i >= 0; i--) {
        FARPROC f = GetProcAddress(modules[i], name);
        if (f) return (void *)f;
    }
    return NULL;
}

static int load_libraries(const char *folder, char **names, int n) {
    wchar_t wfolder[MAX_PATH], wpath[MAX_PATH];
    MultiByteToWideChar(CP_UTF8, 0, folder, -1, wfolder, MAX_PATH);
    if (!AddDllDirectory(wfolder)) return fail("AddDllDirectory failed");
    for (int i = 0; i < n && n_modules < 16; i++) {
        char path[MAX_PATH];
        snprintf(path, sizeof path, "%s\\%s", folder, names[i]);
        MultiByteToWideChar(CP_UTF8, 0, path, -1, wpath, MAX_PATH);
        HMODULE h = LoadLibraryExW(wpath, NULL, LOAD_LIBRARY_SEARCH_DEFAULT_DIRS |
                                                LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR);
        if (!h) {
            fprintf(stderr, "greedy_win: LoadLibraryExW(%s) failed: error %lu\n", path, GetLastError());
            return 1;
        }
        modules[n_modules++] = h;
    }
#define RESOLVE(name) \
    if (!(p_##name = (__typeof__(p_##name))find(#name))) return fail("missing export " #name);
    FUNCTIONS(RESOLVE)
    return 0;
}

static void log_plugins(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
    else if (strstr(text, " score: ") || strstr(text, "loaded ")) printf("log %s", text);
}

static double now_us(void) {
    LARGE_INTEGER t, f;
    QueryPerformanceCounter(&t);
    QueryPerformanceFrequency(&f);
    return (double)t.QuadPart * 1e6 / (double)f.QuadPart;
}

static void print_backends(void) {
    for (size_t i = 0; i < p_ggml_backend_reg_count(); i++)
        printf("backend %s\n", p_ggml_backend_reg_name(p_ggml_backend_reg_get(i)));
    for (size_t i = 0; i < p_ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = p_ggml_backend_dev_get(i);
        printf("device %s | %s\n", p_ggml_backend_dev_name(d), p_ggml_backend_dev_description(d));
    }
    printf("system_info %s\n", p_llama_print_system_info());
}

static int generate(struct llama_context *ctx, const struct llama_vocab *vocab,
                    const char *prompt, int n_gen, int reps) {
    int cap = (int)strlen(prompt) + 8;
    llama_token *toks = malloc(sizeof(llama_token) * cap);
    llama_token *out = malloc(sizeof(llama_token) * (n_gen + 1));
    int n_prompt = p_llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, cap, true, false);
    if (n_prompt <= 0) return fail("tokenize failed");
    char piece[256];
    double loop_us = 0;
    long loop_tokens = 0;
    for (int r = 0; r < reps; r++) {
        p_llama_memory_clear(p_llama_get_memory(ctx), true);
        struct llama_sampler *smpl = p_llama_sampler_chain_init(p_llama_sampler_chain_default_params());
        p_llama_sampler_chain_add(smpl, p_llama_sampler_init_greedy());
        if (p_llama_decode(ctx, p_llama_batch_get_one(toks, n_prompt)) != 0) return fail("prompt decode failed");
        int got = 0;
        double t0 = now_us();
        for (int i = 0; i < n_gen; i++) {
            llama_token t = p_llama_sampler_sample(smpl, ctx, -1);
            if (p_llama_vocab_is_eog(vocab, t)) break;
            p_llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
            out[got++] = t;
            if (i + 1 < n_gen && p_llama_decode(ctx, p_llama_batch_get_one(&out[got - 1], 1)) != 0)
                return fail("decode failed");
            if (i == 0) t0 = now_us();  /* the first token belongs to the prompt's cost */
        }
        if (got > 1) { loop_us += now_us() - t0; loop_tokens += got - 1; }
        printf("ids");
        for (int i = 0; i < got; i++) printf(" %d", out[i]);
        printf("\n");
        p_llama_sampler_free(smpl);
    }
    printf("gen_us_per_token %.3f\n", loop_tokens ? loop_us / loop_tokens : 0.0);
    free(toks);
    free(out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: %s FOLDER MODEL PROMPT N_GEN THREADS N_CTX REPS LIBRARY...\n", argv[0]);
        return 2;
    }
    const char *folder = argv[1], *path = argv[2], *prompt = argv[3];
    int n_gen = atoi(argv[4]), threads = atoi(argv[5]), n_ctx = atoi(argv[6]), reps = atoi(argv[7]);
    if (load_libraries(folder, argv + 8, argc - 8)) return 1;
    p_llama_log_set(log_plugins, NULL);
    p_ggml_backend_load_all_from_path(folder);
    p_llama_backend_init();
    print_backends();
    fflush(stdout);

    struct llama_model_params mp = p_llama_model_default_params();
    mp.n_gpu_layers = getenv("GREEDY_GPU_LAYERS") ? atoi(getenv("GREEDY_GPU_LAYERS")) : 0;
    struct llama_model *model = p_llama_model_load_from_file(path, mp);
    if (!model) return fail("model load failed");
    struct llama_context_params cp = p_llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = 512;
    cp.n_ubatch = cp.n_ubatch < 512 ? cp.n_ubatch : 512;
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *ctx = p_llama_init_from_model(model, cp);
    if (!ctx) return fail("context creation failed");
    int rc = generate(ctx, p_llama_model_get_vocab(model), prompt, n_gen, reps);
    p_llama_free(ctx);
    p_llama_model_free(model);
    p_llama_backend_free();
    return rc;
}
