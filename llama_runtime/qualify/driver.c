/* The qualification child in C (llama_runtime/qualify/cross.py), for the variants whose libraries
 * no Python on this machine can load: an aarch64 build run under qemu-aarch64 (cross-compiled with
 * aarch64-linux-gnu-gcc), a Windows build run under Wine (x86_64-w64-mingw32-gcc). It does what
 * llama_runtime/plugins/child.py does in its qualification mode, and prints the same JSON lines,
 * each before its step and flushed, so the parent (plugins/trial.py: parse_child) knows which
 * plugin and which type an instruction killed:
 *   {"score": P} {"scored": P, "value": N} {"load": P}, per model {"run": P, "type": T} then
 *   {"trace": T, "ids": [...], "second": [...], "margin": [...], "top": [...]}, last {"ok": true}
 *   or {"error": "...", "stage": "..."}; in quantize mode {"quantize": T} {"quantized": T}.
 * The numbers are the child's: the first maximum is the greedy token, the runner-up the first
 * maximum of the others, margin and top in double precision ("%.17g" reads back exactly), a
 * context of 64 tokens, batches of 64, llama.cpp's defaults otherwise.
 *
 * The job comes on stdin, one item a line (a path is the rest of its line):
 *   lib PATH (in load order, libllama last)   plugin PATH   backend_dir PATH
 *   prompt ID...   n_gen N   threads N   model TYPE PATH   force TYPE ID...
 *   source PATH   quantize TYPE FTYPE PATH
 * Every function is looked up at run time (dlsym / GetProcAddress): nothing is linked, so the
 * same source builds for every target with only the headers in llama_runtime/native/include. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"
#ifdef _WIN32
#include <windows.h>
typedef HMODULE lib_t;
static lib_t open_lib(const char *path) {
    wchar_t w[4096];
    MultiByteToWideChar(CP_UTF8, 0, path, -1, w, 4096);
    return LoadLibraryExW(w, NULL, LOAD_LIBRARY_SEARCH_DEFAULT_DIRS | LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR);
}
static void *find_in(lib_t lib, const char *name) { return (void *)GetProcAddress(lib, name); }
static const char *lib_error(void) { static char m[64]; snprintf(m, sizeof m, "error %lu", GetLastError()); return m; }
#else
#include <dlfcn.h>
typedef void *lib_t;
static lib_t open_lib(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }  /* ctypes.CDLL's mode */
static void *find_in(lib_t lib, const char *name) { return dlsym(lib, name); }
static const char *lib_error(void) { return dlerror(); }
#endif

#define FUNCTIONS(X) \
    X(llama_log_set) X(llama_backend_init) X(ggml_backend_load) X(ggml_backend_load_all_from_path) \
    X(ggml_backend_dev_count) X(llama_model_default_params) X(llama_model_load_from_file) \
    X(llama_model_free) X(llama_context_default_params) X(llama_init_from_model) X(llama_free) \
    X(llama_model_get_vocab) X(llama_vocab_n_tokens) X(llama_get_logits_ith) X(llama_decode) \
    X(llama_batch_get_one) X(llama_model_quantize_default_params) X(llama_model_quantize)
#define DECLARE(name) static __typeof__(&name) p_##name;
FUNCTIONS(DECLARE)

enum { MAX_LIBS = 16, MAX_MODELS = 16, MAX_IDS = 1024 };
struct model { char type[32]; char *path; int force[MAX_IDS]; int n_force; };
static lib_t libs[MAX_LIBS];
static int n_libs, prompt[MAX_IDS], n_prompt, n_gen = 32, threads = 1, n_models;
static struct model models[MAX_MODELS];
static char *lib_paths[MAX_LIBS], *plugin, *backend_dir, *source, errors[2048];
static char q_types[MAX_MODELS][32], *q_paths[MAX_MODELS];
static int q_ftypes[MAX_MODELS], n_quant;

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static const char *base(const char *path) {
    const char *b = path;
    for (const char *s = path; *s; s++) if (*s == '/' || *s == '\\') b = s + 1;
    return b;
}

static void say(const char *key, const char *value, const char *type) {
    printf("{\"%s\": ", key);
    if (value) json_str(value); else printf("null");
    if (type) { printf(", \"type\": "); json_str(type); }
    printf("}\n");
    fflush(stdout);
}

static int fail(const char *stage, const char *what, const char *detail) {
    char msg[4096];
    snprintf(msg, sizeof msg, "%s%s%s", what, detail && *detail ? ": " : "", detail ? detail : "");
    printf("{\"error\": ");
    json_str(msg);
    printf(", \"stage\": \"%s\"", stage);
    if (plugin && strcmp(stage, "setup") && strcmp(stage, "quantize")) { printf(", \"plugin\": "); json_str(base(plugin)); }
    printf("}\n");
    fflush(stdout);
    return 3;
}

/* llama.cpp says why a call failed only in its log: the warnings and errors go into the error */
static void on_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level != GGML_LOG_LEVEL_ERROR && level != GGML_LOG_LEVEL_WARN) return;
    fputs(text, stderr);
    size_t used = strlen(errors);
    snprintf(errors + used, sizeof errors - used, "%s", text);
    for (char *c = errors; *c; c++) if (*c == '\n') *c = ' ';
}

static char *rest(char *line, int skip) {  /* the text after the first ``skip`` words */
    char *s = line;
    for (int i = 0; i < skip; i++) { s = strchr(s, ' '); if (!s) return NULL; s++; }
    return strdup(s);
}

static int ids(char *text, int *out) {
    int n = 0;
    for (char *t = strtok(text, " "); t && n < MAX_IDS; t = strtok(NULL, " ")) out[n++] = atoi(t);
    return n;
}

static int read_job(void) {
    char line[16384], word[32], type[32];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        if (sscanf(line, "%31s", word) != 1) continue;
        if (!strcmp(word, "lib") && n_libs < MAX_LIBS) lib_paths[n_libs++] = rest(line, 1);
        else if (!strcmp(word, "plugin")) plugin = rest(line, 1);
        else if (!strcmp(word, "backend_dir")) backend_dir = rest(line, 1);
        else if (!strcmp(word, "source")) source = rest(line, 1);
        else if (!strcmp(word, "prompt")) n_prompt = ids(line + 6, prompt);
        else if (!strcmp(word, "n_gen")) n_gen = atoi(line + 5);
        else if (!strcmp(word, "threads")) threads = atoi(line + 7);
        else if (!strcmp(word, "model") && n_models < MAX_MODELS && sscanf(line, "model %31s", type) == 1) {
            snprintf(models[n_models].type, 32, "%s", type);
            models[n_models++].path = rest(line, 2);
        } else if (!strcmp(word, "force") && sscanf(line, "force %31s", type) == 1) {
            for (int i = 0; i < n_models; i++)
                if (!strcmp(models[i].type, type)) models[i].n_force = ids(line + 7 + strlen(type), models[i].force);
        } else if (!strcmp(word, "quantize") && n_quant < MAX_MODELS &&
                   sscanf(line, "quantize %31s %d", q_types[n_quant], &q_ftypes[n_quant]) == 2) {
            q_paths[n_quant++] = rest(line, 3);
        } else return fail("setup", "bad job line", line);
    }
    return n_libs ? 0 : fail("setup", "bad job", "no lib line");
}

static int load_libraries(void) {
#ifdef _WIN32
    char folder[4096];  /* the loader's os.add_dll_directory: siblings resolve from the folder */
    wchar_t w[4096];
    snprintf(folder, sizeof folder, "%.*s", (int)(base(lib_paths[n_libs - 1]) - lib_paths[n_libs - 1]), lib_paths[n_libs - 1]);
    MultiByteToWideChar(CP_UTF8, 0, folder, -1, w, 4096);
    AddDllDirectory(w);
#endif
    for (int i = 0; i < n_libs; i++)
        if (!(libs[i] = open_lib(lib_paths[i]))) return fail("setup", "cannot load", lib_error());
#define RESOLVE(name) \
    for (int i = n_libs - 1; i >= 0 && !p_##name; i--) p_##name = (__typeof__(p_##name))find_in(libs[i], #name); \
    if (!p_##name) return fail("setup", "the libraries lack", #name);
    FUNCTIONS(RESOLVE)
    return 0;
}

static int quantize(void) {
    for (int i = 0; i < n_quant; i++) {
        say("quantize", q_types[i], NULL);
        struct llama_model_quantize_params qp = p_llama_model_quantize_default_params();
        qp.ftype = (enum llama_ftype)q_ftypes[i];
        qp.nthread = 1;
        errors[0] = 0;
        if (p_llama_model_quantize(source, q_paths[i], &qp)) return fail("quantize", "llama_model_quantize failed", errors);
        say("quantized", q_types[i], NULL);
    }
    printf("{\"ok\": true}\n");
    return 0;
}

static int load_plugin(void) {
    if (backend_dir) {  /* ggml's own scan of the folder */
        p_ggml_backend_load_all_from_path(backend_dir);
        if (p_ggml_backend_dev_count() == 0) return fail("load", "ggml found no usable backend in", backend_dir);
        return 0;
    }
    say("score", base(plugin), NULL);
    lib_t lib = open_lib(plugin);
    int (*score)(void) = lib ? (int (*)(void))find_in(lib, "ggml_backend_score") : NULL;
    printf("{\"scored\": ");
    json_str(base(plugin));
    if (score) printf(", \"value\": %d}\n", score()); else printf(", \"value\": null}\n");
    fflush(stdout);
    say("load", base(plugin), NULL);
    errors[0] = 0;
    if (!p_ggml_backend_load(plugin))
        return fail("load", "ggml refused the CPU plugin (ggml_backend_load returned NULL; it scores 0 here?)", errors);
    return 0;
}

static void print_list(const char *key, const double *v, int n, int as_int) {
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++) printf(as_int ? "%s%.0f" : "%s%.17g", i ? ", " : "", v[i]);
    printf("]");
}

static int trace(const struct model *m) {
    struct llama_model_params mp = p_llama_model_default_params();
    mp.n_gpu_layers = 0;
    errors[0] = 0;
    struct llama_model *model = p_llama_model_load_from_file(m->path, mp);
    if (!model) return fail("run", "llama.cpp could not load the model", errors);
    struct llama_context_params cp = p_llama_context_default_params();
    cp.n_ctx = cp.n_batch = 64;
    cp.n_ubatch = cp.n_ubatch < 64 ? cp.n_ubatch : 64;
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *ctx = p_llama_init_from_model(model, cp);
    if (!ctx) return fail("run", "llama.cpp could not create a context", errors);
    int n_vocab = p_llama_vocab_n_tokens(p_llama_model_get_vocab(model));
    static double best_v[MAX_IDS], second_v[MAX_IDS], margin_v[MAX_IDS], top_v[MAX_IDS];
    if (p_llama_decode(ctx, p_llama_batch_get_one(prompt, n_prompt))) return fail("run", "llama_decode failed", errors);
    for (int step = 0; step < n_gen && step < MAX_IDS; step++) {
        const float *l = p_llama_get_logits_ith(ctx, -1);
        int a = 0, b = -1;
        for (int i = 1; i < n_vocab; i++) if (l[i] > l[a]) a = i;
        for (int i = 0; i < n_vocab; i++) if (i != a && (b < 0 || l[i] > l[b])) b = i;
        best_v[step] = a, second_v[step] = b, top_v[step] = l[a];
        margin_v[step] = (double)l[a] - (double)l[b];
        int next = m->n_force > step ? m->force[step] : a;  /* teacher forcing: the reference's text */
        if (step + 1 < n_gen && p_llama_decode(ctx, p_llama_batch_get_one(&next, 1)))
            return fail("run", "llama_decode failed", errors);
    }
    printf("{\"trace\": ");
    json_str(m->type);
    print_list("ids", best_v, n_gen, 1);
    print_list("second", second_v, n_gen, 1);
    print_list("margin", margin_v, n_gen, 0);
    print_list("top", top_v, n_gen, 0);
    printf("}\n");
    fflush(stdout);
    p_llama_free(ctx);
    p_llama_model_free(model);
    return 0;
}

#ifdef _WIN32
/* An exit status reaches a Linux parent as 8 bits: the exception code (0xC000001D, an illegal
 * instruction) is said on a line of its own ({"ntstatus": N}, plugins/trial.py: parse_child). */
static LONG WINAPI on_crash(EXCEPTION_POINTERS *e) {
    printf("{\"ntstatus\": %lu}\n", (unsigned long)e->ExceptionRecord->ExceptionCode);
    fflush(stdout);
    TerminateProcess(GetCurrentProcess(), 3);
    return EXCEPTION_EXECUTE_HANDLER;
}
#endif

int main(void) {
#ifdef _WIN32  /* no error-report dialog (or winedbg) for the crash this process exists to risk */
    SetErrorMode(SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX | SEM_NOOPENFILEERRORBOX);
    SetUnhandledExceptionFilter(on_crash);
#endif
    int rc = read_job();
    if (!rc) rc = load_libraries();
    if (rc) return rc;
    p_llama_log_set(on_log, NULL);
    if (n_quant) return quantize();
    if ((rc = load_plugin())) return rc;
    p_llama_backend_init();
    for (int i = 0; i < n_models; i++) {
        say("run", plugin ? base(plugin) : NULL, models[i].type);
        if ((rc = trace(&models[i]))) return rc;
    }
    printf("{\"ok\": true, \"plugin\": ");
    if (plugin) json_str(base(plugin)); else printf("null");
    printf(", \"ids\": []}\n");
    return 0;
}
