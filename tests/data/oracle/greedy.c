/* The correctness oracle (tests/test_oracle.py) and speed baseline (benchmarks/b_binding_overhead.py):
 * libllama driven straight from C, greedy, the way llama-runtime's Llama does it.
 *
 * usage: greedy MODEL PROMPT N_GEN THREADS N_CTX REPS [BACKEND_DIR]
 * BACKEND_DIR: a GGML_BACKEND_DL build loads its backends from there first.
 * Prints, per rep, one line: "ids <token> <token> ..." (the generated ids), then one line
 * "gen_us_per_token <float>": the loop of decode(1) + greedy sample + token_to_piece,
 * averaged over the tokens after the first, over all reps. Exit 1 with a message on failure.
 * GREEDY_TRACE=1 (cross-CPU comparisons, tests/test_aarch64.py): per rep also "second <id> ..."
 * (the runner-up token of each step) and "margin <float> ..." (top-1 minus top-2 logit), and
 * ggml's "loaded CPU backend from PLUGIN" line goes to stderr (which plugin ggml picked). */
#define _POSIX_C_SOURCE 199309L  /* clock_gettime under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "llama.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int trace;

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR || (trace && strstr(text, "loaded CPU backend from")))
        fputs(text, stderr);
}

/* The best and second-best logits of the last decoded position (greedy picks the best). */
static void top2(struct llama_context *ctx, int n_vocab, int *second, float *margin) {
    const float *l = llama_get_logits_ith(ctx, -1);
    int a = 0, b = -1;
    for (int i = 1; i < n_vocab; i++) {
        if (l[i] > l[a]) { b = a; a = i; }
        else if (b < 0 || l[i] > l[b]) b = i;
    }
    *second = b;
    *margin = l[a] - l[b];
}

static void print_trace(int got, const int *second, const float *margin) {
    printf("second");
    for (int i = 0; i < got; i++) printf(" %d", second[i]);
    printf("\nmargin");
    for (int i = 0; i < got; i++) printf(" %.6g", margin[i]);
    printf("\n");
}

static int fail(const char *what) { fprintf(stderr, "greedy: %s\n", what); return 1; }

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_GEN THREADS N_CTX REPS [BACKEND_DIR]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2];
    int n_gen = atoi(argv[3]), threads = atoi(argv[4]), n_ctx = atoi(argv[5]), reps = atoi(argv[6]);
    const char *trace_env = getenv("GREEDY_TRACE");
    trace = trace_env && trace_env[0] == '1';
    llama_log_set(quiet, NULL);
    if (argc > 7) ggml_backend_load_all_from_path(argv[7]);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    /* GREEDY_GPU_LAYERS: layers to offload (a GPU backend's ids, tests/test_windows_build.py) */
    mp.n_gpu_layers = getenv("GREEDY_GPU_LAYERS") ? atoi(getenv("GREEDY_GPU_LAYERS")) : 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) return fail("model load failed");
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = 512;
    cp.n_ubatch = cp.n_ubatch < 512 ? cp.n_ubatch : 512;
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return fail("context creation failed");
    const struct llama_vocab *vocab = llama_model_get_vocab(model);

    int cap = (int)strlen(prompt) + 8;
    llama_token *toks = malloc(sizeof(llama_token) * cap);
    llama_token *out = malloc(sizeof(llama_token) * (n_gen + 1));
    int *second = malloc(sizeof(int) * (n_gen + 1));
    float *margin = malloc(sizeof(float) * (n_gen + 1));
    int n_vocab = llama_vocab_n_tokens(vocab);
    int n_prompt = llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, cap, true, false);
    if (n_prompt <= 0) return fail("tokenize failed");
    char piece[256];
    double loop_us = 0;
    long loop_tokens = 0;
    for (int r = 0; r < reps; r++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        struct llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
        if (llama_decode(ctx, llama_batch_get_one(toks, n_prompt)) != 0) return fail("prompt decode failed");
        int got = 0;
        double t0 = now_us();
        for (int i = 0; i < n_gen; i++) {
            if (trace) top2(ctx, n_vocab, &second[got], &margin[got]);
            llama_token t = llama_sampler_sample(smpl, ctx, -1);
            if (llama_vocab_is_eog(vocab, t)) break;
            llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
            out[got++] = t;
            if (i + 1 < n_gen && llama_decode(ctx, llama_batch_get_one(&out[got - 1], 1)) != 0)
                return fail("decode failed");
            if (i == 0) t0 = now_us();  /* the first token belongs to the prompt's cost */
        }
        if (got > 1) { loop_us += now_us() - t0; loop_tokens += got - 1; }
        printf("ids");
        for (int i = 0; i < got; i++) printf(" %d", out[i]);
        printf("\n");
        if (trace) print_trace(got, second, margin);
        llama_sampler_free(smpl);
    }
    printf("gen_us_per_token %.3f\n", loop_tokens ? loop_us / loop_tokens : 0.0);
    free(toks);
    free(out);
    free(second);
    free(margin);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
