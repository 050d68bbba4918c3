"""The C functions llama-runtime calls, as a declarative table.

Each entry is ``(name, argtypes, restype, prototype)`` where the prototype is copied from the
pinned ``include/llama.h`` (or ``ggml-backend.h``). Opaque handles (``llama_model *``,
``llama_context *``, ``llama_vocab *``, ``llama_sampler *``, ``llama_memory_t``) are ``c_void_p``:
Python never looks inside them. Structs passed or returned by value use the classes of
``structs.py``; ctypes copies them with the right size only if those layouts are exact.

Every symbol here must exist in the loaded library or ``Native.open`` fails with the list of
missing names: a library of another generation is refused up front instead of crashing later.
Entries marked ``optional`` serve an optimisation only (the persistent thread pool): a library
without them still loads, and the attribute is ``None``.

``CPU_PROCS`` are functions of the CPU backend that are not exported where ggml loads that
backend as a plugin (``GGML_BACKEND_DL``): they are reached through
``ggml_backend_reg_get_proc_address`` and called through a ``CFUNCTYPE`` of the same signature.
"""

from __future__ import annotations

from ctypes import (
    POINTER,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import Any, NamedTuple

from .structs import (
    ggml_backend_feature,
    ggml_log_callback,
    ggml_threadpool_params,
    llama_batch,
    llama_chat_message,
    llama_context_params,
    llama_model_params,
    llama_model_quantize_params,
    llama_pos,
    llama_sampler_chain_params,
    llama_seq_id,
    llama_token,
)

model_p = c_void_p  # struct llama_model *
context_p = c_void_p  # struct llama_context *
vocab_p = c_void_p  # const struct llama_vocab *
sampler_p = c_void_p  # struct llama_sampler *
memory_t = c_void_p  # llama_memory_t
reg_t = c_void_p  # ggml_backend_reg_t
threadpool_t = c_void_p  # ggml_threadpool_t (struct ggml_threadpool *)
token_p = POINTER(llama_token)


class Fn(NamedTuple):
    name: str
    argtypes: list[Any]
    restype: Any  # None for void
    prototype: str
    optional: bool = False  # a library without it still loads; the attribute is then None


# fmt: off
FUNCTIONS: list[Fn] = [
    # --- ggml-backend.h: backends built with GGML_BACKEND_DL are separate libraries
    Fn("ggml_backend_load_all_from_path", [c_char_p], None,
       "void ggml_backend_load_all_from_path(const char * dir_path);"),
    # one plugin by path (refused when its ggml_backend_score() is 0): the loader's way around
    # a CPU plugin that crashed in its test run (plugins/prove.py)
    Fn("ggml_backend_load", [c_char_p], reg_t,
       "ggml_backend_reg_t ggml_backend_load(const char * path);", optional=True),
    Fn("ggml_backend_dev_count", [], c_size_t,
       "size_t ggml_backend_dev_count(void);"),
    Fn("ggml_backend_reg_count", [], c_size_t,
       "size_t ggml_backend_reg_count(void);"),
    Fn("ggml_backend_dev_get", [c_size_t], c_void_p,
       "ggml_backend_dev_t ggml_backend_dev_get(size_t index);"),
    Fn("ggml_backend_dev_name", [c_void_p], c_char_p,
       "const char * ggml_backend_dev_name(ggml_backend_dev_t device);"),
    Fn("ggml_backend_dev_description", [c_void_p], c_char_p,
       "const char * ggml_backend_dev_description(ggml_backend_dev_t device);"),
    Fn("ggml_backend_dev_type", [c_void_p], c_int32,
       "enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);"),

    # --- the persistent thread pool (builds without OpenMP): optional, see context.py
    Fn("ggml_backend_reg_by_name", [c_char_p], reg_t,
       "ggml_backend_reg_t ggml_backend_reg_by_name(const char * name);", optional=True),
    Fn("ggml_backend_reg_get_proc_address", [reg_t, c_char_p], c_void_p,
       "void * ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char * name);",
       optional=True),
    Fn("ggml_threadpool_params_default", [c_int], ggml_threadpool_params,
       "struct ggml_threadpool_params ggml_threadpool_params_default(int n_threads);",
       optional=True),
    Fn("llama_attach_threadpool", [context_p, threadpool_t, threadpool_t], None,
       "void llama_attach_threadpool(struct llama_context * ctx, ggml_threadpool_t threadpool, "
       "ggml_threadpool_t threadpool_batch);", optional=True),

    # --- process-wide
    Fn("llama_backend_init", [], None, "void llama_backend_init(void);"),
    Fn("llama_backend_free", [], None, "void llama_backend_free(void);"),
    Fn("llama_log_set", [ggml_log_callback, c_void_p], None,
       "void llama_log_set(ggml_log_callback log_callback, void * user_data);"),
    Fn("llama_print_system_info", [], c_char_p,
       "const char * llama_print_system_info(void);"),
    Fn("llama_supports_gpu_offload", [], c_bool, "bool llama_supports_gpu_offload(void);"),
    Fn("llama_supports_mmap", [], c_bool, "bool llama_supports_mmap(void);"),
    Fn("llama_max_devices", [], c_size_t, "size_t llama_max_devices(void);"),
    Fn("llama_time_us", [], c_int64,
       "int64_t llama_time_us(void);"),

    # --- defaults (returned by value: the struct layouts must be exact)
    Fn("llama_model_default_params", [], llama_model_params,
       "struct llama_model_params llama_model_default_params(void);"),
    Fn("llama_context_default_params", [], llama_context_params,
       "struct llama_context_params llama_context_default_params(void);"),
    Fn("llama_sampler_chain_default_params", [], llama_sampler_chain_params,
       "struct llama_sampler_chain_params llama_sampler_chain_default_params(void);"),
    Fn("llama_model_quantize_default_params", [], llama_model_quantize_params,
       "struct llama_model_quantize_params llama_model_quantize_default_params(void);"),

    # --- quantization (llama-runtime quantize): reads one GGUF, writes another
    Fn("llama_model_quantize", [c_char_p, c_char_p, POINTER(llama_model_quantize_params)], c_uint32,
       "uint32_t llama_model_quantize(const char * fname_inp, const char * fname_out, "
       "const llama_model_quantize_params * params);"),

    # --- model and context
    Fn("llama_model_load_from_file", [c_char_p, llama_model_params], model_p,
       "struct llama_model * llama_model_load_from_file(const char * path_model, "
       "struct llama_model_params params);"),
    Fn("llama_model_free", [model_p], None, "void llama_model_free(struct llama_model * model);"),
    Fn("llama_init_from_model", [model_p, llama_context_params], context_p,
       "struct llama_context * llama_init_from_model(struct llama_model * model, "
       "struct llama_context_params params);"),
    Fn("llama_free", [context_p], None, "void llama_free(struct llama_context * ctx);"),
    Fn("llama_n_ctx", [context_p], c_uint32, "uint32_t llama_n_ctx(const struct llama_context * ctx);"),
    Fn("llama_set_n_threads", [context_p, c_int32, c_int32], None,
       "void llama_set_n_threads(struct llama_context * ctx, int32_t n_threads, int32_t n_threads_batch);"),
    Fn("llama_n_batch", [context_p], c_uint32,
       "uint32_t llama_n_batch(const struct llama_context * ctx);"),
    Fn("llama_get_memory", [context_p], memory_t,
       "llama_memory_t llama_get_memory(const struct llama_context * ctx);"),
    Fn("llama_memory_clear", [memory_t, c_bool], None,
       "void llama_memory_clear(llama_memory_t mem, bool data);"),
    Fn("llama_memory_seq_rm", [memory_t, llama_seq_id, llama_pos, llama_pos], c_bool,
       "bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, "
       "llama_pos p1);"),
    Fn("llama_memory_seq_pos_max", [memory_t, llama_seq_id], llama_pos,
       "llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id);"),
    Fn("llama_pooling_type", [context_p], c_int32,
       "enum llama_pooling_type llama_pooling_type(const struct llama_context * ctx);"),
    Fn("llama_model_get_vocab", [model_p], vocab_p,
       "const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);"),
    Fn("llama_model_n_ctx_train", [model_p], c_int32,
       "int32_t llama_model_n_ctx_train(const struct llama_model * model);"),
    Fn("llama_model_n_embd", [model_p], c_int32,
       "int32_t llama_model_n_embd(const struct llama_model * model);"),
    Fn("llama_model_n_layer", [model_p], c_int32,
       "int32_t llama_model_n_layer(const struct llama_model * model);"),
    Fn("llama_model_desc", [model_p, c_char_p, c_size_t], c_int32,
       "int32_t llama_model_desc(const struct llama_model * model, char * buf, size_t buf_size);"),
    Fn("llama_model_meta_val_str", [model_p, c_char_p, c_char_p, c_size_t], c_int32,
       "int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key, "
       "char * buf, size_t buf_size);"),
    Fn("llama_model_chat_template", [model_p, c_char_p], c_char_p,
       "const char * llama_model_chat_template(const struct llama_model * model, const char * name);"),

    # --- vocabulary
    Fn("llama_vocab_type", [vocab_p], c_int32,
       "enum llama_vocab_type llama_vocab_type(const struct llama_vocab * vocab);"),
    Fn("llama_vocab_n_tokens", [vocab_p], c_int32,
       "int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);"),
    Fn("llama_vocab_bos", [vocab_p], llama_token,
       "llama_token llama_vocab_bos(const struct llama_vocab * vocab);"),
    Fn("llama_vocab_eos", [vocab_p], llama_token,
       "llama_token llama_vocab_eos(const struct llama_vocab * vocab);"),
    Fn("llama_vocab_eot", [vocab_p], llama_token,
       "llama_token llama_vocab_eot(const struct llama_vocab * vocab);"),
    Fn("llama_vocab_nl", [vocab_p], llama_token,
       "llama_token llama_vocab_nl (const struct llama_vocab * vocab);"),
    Fn("llama_vocab_get_add_bos", [vocab_p], c_bool,
       "bool llama_vocab_get_add_bos(const struct llama_vocab * vocab);"),
    Fn("llama_vocab_is_eog", [vocab_p, llama_token], c_bool,
       "bool llama_vocab_is_eog(const struct llama_vocab * vocab, llama_token token);"),
    Fn("llama_vocab_get_text", [vocab_p, llama_token], c_char_p,
       "const char * llama_vocab_get_text(const struct llama_vocab * vocab, llama_token token);"),
    Fn("llama_tokenize",
       [vocab_p, c_char_p, c_int32, token_p, c_int32, c_bool, c_bool], c_int32,
       "int32_t llama_tokenize(const struct llama_vocab * vocab, const char * text, "
       "int32_t text_len, llama_token * tokens, int32_t n_tokens_max, bool add_special, "
       "bool parse_special);"),
    Fn("llama_token_to_piece",
       [vocab_p, llama_token, c_char_p, c_int32, c_int32, c_bool], c_int32,
       "int32_t llama_token_to_piece(const struct llama_vocab * vocab, llama_token token, "
       "char * buf, int32_t length, int32_t lstrip, bool special);"),
    Fn("llama_detokenize",
       [vocab_p, token_p, c_int32, c_char_p, c_int32, c_bool, c_bool], c_int32,
       "int32_t llama_detokenize(const struct llama_vocab * vocab, const llama_token * tokens, "
       "int32_t n_tokens, char * text, int32_t text_len_max, bool remove_special, "
       "bool unparse_special);"),
    Fn("llama_chat_apply_template",
       [c_char_p, POINTER(llama_chat_message), c_size_t, c_bool, c_char_p, c_int32], c_int32,
       "int32_t llama_chat_apply_template(const char * tmpl, const struct llama_chat_message * chat, "
       "size_t n_msg, bool add_ass, char * buf, int32_t length);"),
    Fn("llama_chat_builtin_templates", [POINTER(c_char_p), c_size_t], c_int32,
       "int32_t llama_chat_builtin_templates(const char ** output, size_t len);"),

    # --- decoding
    Fn("llama_batch_get_one", [token_p, c_int32], llama_batch,
       "struct llama_batch llama_batch_get_one(llama_token * tokens, int32_t n_tokens);"),
    Fn("llama_batch_init", [c_int32, c_int32, c_int32], llama_batch,
       "struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);"),
    Fn("llama_batch_free", [llama_batch], None, "void llama_batch_free(struct llama_batch batch);"),
    Fn("llama_decode", [context_p, llama_batch], c_int32,
       "int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);"),
    Fn("llama_get_logits_ith", [context_p, c_int32], POINTER(c_float),
       "float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);"),

    # --- embeddings
    Fn("llama_set_embeddings", [context_p, c_bool], None,
       "void llama_set_embeddings(struct llama_context * ctx, bool embeddings);"),
    Fn("llama_get_embeddings_ith", [context_p, c_int32], POINTER(c_float),
       "float * llama_get_embeddings_ith(struct llama_context * ctx, int32_t i);"),
    Fn("llama_get_embeddings_seq", [context_p, llama_seq_id], POINTER(c_float),
       "float * llama_get_embeddings_seq(struct llama_context * ctx, llama_seq_id seq_id);"),

    # --- sampling
    Fn("llama_sampler_chain_init", [llama_sampler_chain_params], sampler_p,
       "struct llama_sampler * llama_sampler_chain_init(struct llama_sampler_chain_params params);"),
    Fn("llama_sampler_chain_add", [sampler_p, sampler_p], None,
       "void llama_sampler_chain_add(struct llama_sampler * chain, struct llama_sampler * smpl);"),
    Fn("llama_sampler_init_greedy", [], sampler_p,
       "struct llama_sampler * llama_sampler_init_greedy(void);"),
    Fn("llama_sampler_init_dist", [c_uint32], sampler_p,
       "struct llama_sampler * llama_sampler_init_dist(uint32_t seed);"),
    Fn("llama_sampler_init_top_k", [c_int32], sampler_p,
       "struct llama_sampler * llama_sampler_init_top_k(int32_t k);"),
    Fn("llama_sampler_init_top_p", [c_float, c_size_t], sampler_p,
       "struct llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep);"),
    Fn("llama_sampler_init_min_p", [c_float, c_size_t], sampler_p,
       "struct llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep);"),
    Fn("llama_sampler_init_penalties", [c_int32, c_int32, c_float, c_float, c_float], sampler_p,
       "struct llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, "
       "int32_t penalty_last_n, float penalty_repeat, float penalty_freq, float penalty_present);"),
    Fn("llama_sampler_init_temp", [c_float], sampler_p,
       "struct llama_sampler * llama_sampler_init_temp(float t);"),
    Fn("llama_sampler_sample", [sampler_p, context_p, c_int32], llama_token,
       "llama_token llama_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, "
       "int32_t idx);"),
    Fn("llama_sampler_accept", [sampler_p, llama_token], None,
       "void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);"),
    Fn("llama_sampler_reset", [sampler_p], None,
       "void llama_sampler_reset(struct llama_sampler * smpl);"),
    Fn("llama_sampler_free", [sampler_p], None,
       "void llama_sampler_free(struct llama_sampler * smpl);"),
]
# fmt: on

# Reached through ggml_backend_reg_get_proc_address of the "CPU" registry (ggml-cpu.h and the
# function-pointer typedefs of ggml-backend.h); a missing one means: no thread pool.
# fmt: off
CPU_PROCS: dict[str, Fn] = {fn.name: fn for fn in [
    Fn("ggml_backend_get_features", [reg_t], POINTER(ggml_backend_feature),
       "typedef struct ggml_backend_feature * (*ggml_backend_get_features_t)(ggml_backend_reg_t reg);"),
    Fn("ggml_threadpool_new", [POINTER(ggml_threadpool_params)], threadpool_t,
       "struct ggml_threadpool * ggml_threadpool_new(struct ggml_threadpool_params * params);"),
    Fn("ggml_threadpool_free", [threadpool_t], None,
       "void ggml_threadpool_free(struct ggml_threadpool * threadpool);"),
]}
# fmt: on
