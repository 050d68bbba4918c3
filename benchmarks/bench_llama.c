/* B4 and B7: one libllama (any build: ours, npm, llama-cpp-python's) driven straight from C,
 * the limit a binding can reach.
 * usage: bench_llama MODEL PROMPT N_PROMPT N_GEN THREADS REPS [BACKEND_DIR]
 * N_PROMPT > 0: the prompt is tokenized once and cut to N_PROMPT tokens, so every build sees the
 * same ids (B7). N_PROMPT 0: the whole prompt, tokenized inside the timed part of each rep, as
 * a binding's generate(text) call does it (B4).
 * BACKEND_DIR: for a GGML_BACKEND_DL build, the folder whose libggml-*.so plugins ggml
 * should load (ggml_backend_load_all_from_path, found with dlsym in the already-loaded libggml).
 * Per rep one JSON line: prompt seconds (decode of the prompt in one batch + first greedy
 * sample + its piece), generation seconds of the remaining N_GEN-1 tokens (decode 1 + sample +
 * token_to_piece each), and the greedy ids. The first line on stderr is
 * llama_print_system_info() (which CPU backend and features were used).
 * B7_THREADPOOL=1 in the environment: attach one persistent ggml thread pool to the context
 * (llama_attach_threadpool) instead of ggml's default for builds without OpenMP, a disposable
 * pool created and joined on every llama_decode.
 * Every time is also given in process CPU seconds (prompt_cpu_s, gen_cpu_s): with 1 thread that
 * is the cost of the work whatever else runs on the machine (the load-independent cross-check).
 * A crash (SIGILL, SIGSEGV, SIGBUS, SIGFPE) prints one line on stderr before the process dies of
 * the same signal: "CRASH <signal> lib=<file> offset=0x<pc - load base> sym=<nearest exported>",
 * which the benchmarks resolve to a function with addr2line (a crash is a result, not a failure). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include "llama.h"

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* Where the crash happened. snprintf is not async-signal-safe, but the process dies right after
 * (SA_RESETHAND: returning re-runs the instruction under the default action). */
static void on_crash(int sig, siginfo_t *info, void *uctx) {
    void *pc = info->si_addr;
#if defined(__x86_64__)
    pc = (void *)((ucontext_t *)uctx)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    pc = (void *)((ucontext_t *)uctx)->uc_mcontext.pc;
#else
    (void)uctx;
#endif
    Dl_info dl;
    char line[1024];
    int n;
    if (dladdr(pc, &dl) && dl.dli_fname)
        n = snprintf(line, sizeof line, "CRASH SIG%s lib=%s offset=%#lx sym=%s\n", sigabbrev_np(sig), dl.dli_fname,
                     (unsigned long)((char *)pc - (char *)dl.dli_fbase), dl.dli_sname ? dl.dli_sname : "?");
    else
        n = snprintf(line, sizeof line, "CRASH SIG%s lib=? offset=%p sym=?\n", sigabbrev_np(sig), pc);
    if (n > 0 && write(2, line, (size_t)n) < 0) { /* nothing left to do */ }
}

static void report_crashes(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_crash;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    int sigs[] = {SIGILL, SIGSEGV, SIGBUS, SIGFPE};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
}

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)level; (void)text; (void)user;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_PROMPT N_GEN THREADS REPS [BACKEND_DIR]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2];
    int n_prompt = atoi(argv[3]), n_gen = atoi(argv[4]), threads = atoi(argv[5]), reps = atoi(argv[6]);
    report_crashes();
    llama_log_set(quiet, NULL);
    if (argc > 7 && argv[7][0]) {
        void (*load_all)(const char *) = (void (*)(const char *))dlsym(RTLD_DEFAULT, "ggml_backend_load_all_from_path");
        if (!load_all) { fprintf(stderr, "ggml_backend_load_all_from_path not found\n"); return 1; }
        load_all(argv[7]);
    }
    llama_backend_init();
    fprintf(stderr, "%s\n", llama_print_system_info());
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_ubatch = 512;
    cp.n_threads = threads; cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }
    const char *tp_env = getenv("B7_THREADPOOL");
    if (tp_env && tp_env[0] == '1') {
        ggml_backend_reg_t (*reg_by_name)(const char *) = (ggml_backend_reg_t (*)(const char *))dlsym(RTLD_DEFAULT, "ggml_backend_reg_by_name");
        void *(*get_proc)(ggml_backend_reg_t, const char *) = (void *(*)(ggml_backend_reg_t, const char *))dlsym(RTLD_DEFAULT, "ggml_backend_reg_get_proc_address");
        struct ggml_threadpool_params (*params_default)(int) = (struct ggml_threadpool_params (*)(int))dlsym(RTLD_DEFAULT, "ggml_threadpool_params_default");
        if (!reg_by_name || !get_proc || !params_default) { fprintf(stderr, "ggml thread pool API not found\n"); return 1; }
        ggml_threadpool_t (*tp_new)(struct ggml_threadpool_params *) = (ggml_threadpool_t (*)(struct ggml_threadpool_params *))get_proc(reg_by_name("CPU"), "ggml_threadpool_new");
        if (!tp_new) { fprintf(stderr, "ggml_threadpool_new not found\n"); return 1; }
        struct ggml_threadpool_params tpp = params_default(threads);
        ggml_threadpool_t tp = tp_new(&tpp);
        llama_attach_threadpool(ctx, tp, tp);
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    llama_token *toks = malloc(sizeof(llama_token) * 4096);
    llama_token *out = malloc(sizeof(llama_token) * (n_gen + 1));
    int n = llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, 4096, true, false);
    if (n < n_prompt || n < 1) { fprintf(stderr, "prompt has only %d tokens\n", n); return 1; }
    int whole = n_prompt == 0;
    char piece[256];
    for (int r = 0; r < reps; r++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        struct llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
        double t0 = now(), c0 = cpu();
        if (whole) n_prompt = llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, 4096, true, false);
        if (llama_decode(ctx, llama_batch_get_one(toks, n_prompt)) != 0) { fprintf(stderr, "prompt failed\n"); return 1; }
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
        double t1 = now(), c1 = cpu();
        int got = 0;
        out[got++] = t;
        for (int i = 1; i < n_gen; i++) {
            if (llama_vocab_is_eog(vocab, t)) break;
            if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
            t = llama_sampler_sample(smpl, ctx, -1);
            llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
            out[got++] = t;
        }
        double t2 = now(), c2 = cpu();
        printf("{\"n_prompt\": %d, \"prompt_s\": %.6f, \"n_gen\": %d, \"gen_s\": %.6f, \"prompt_cpu_s\": %.6f, "
               "\"gen_cpu_s\": %.6f, \"ids\": [", n_prompt, t1 - t0, got, t2 - t1, c1 - c0, c2 - c1);
        for (int i = 0; i < got; i++) printf(i ? ", %d" : "%d", out[i]);
        printf("]}\n");
        fflush(stdout);
        llama_sampler_free(smpl);
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
