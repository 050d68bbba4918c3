"""ctypes mirrors of the structs of the pinned ``include/llama.h`` (libllama 0.5.0) and of the
two ggml structs the thread pool needs (``ggml.h``, ``ggml-backend.h``, included by llama.h).

Each class carries the C declaration it copies. The layouts are checked field by field
against the header by ``tests/unit/test_native.py`` (gcc prints ``sizeof``/``offsetof``), and against
the header of every other generation ``generations.py`` accepts by ``tests/unit/test_generations.py``
(v0.4.0's structs are these, byte for byte); when the pinned header changes, change these and
``LLAMA_CPP_GENERATION`` in ``binding.py`` together.
Enums are C ``int`` (their values all fit, so every compiler we target makes them 4 bytes).
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_bool,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import Any

llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32
c_enum = c_int

# typedef bool (*llama_progress_callback)(float progress, void * user_data);
llama_progress_callback = CFUNCTYPE(c_bool, c_float, c_void_p)
# typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
ggml_log_callback = CFUNCTYPE(None, c_enum, c_char_p, c_void_p)
# typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);
ggml_backend_sched_eval_callback = CFUNCTYPE(c_bool, c_void_p, c_bool, c_void_p)
# typedef bool (*ggml_abort_callback)(void * data);
ggml_abort_callback = CFUNCTYPE(c_bool, c_void_p)


class llama_token_data(Structure):
    """typedef struct llama_token_data { llama_token id; float logit; float p; } llama_token_data;"""

    _fields_ = [("id", llama_token), ("logit", c_float), ("p", c_float)]


class llama_token_data_array(Structure):
    """typedef struct llama_token_data_array {
        llama_token_data * data; size_t size; int64_t selected; bool sorted;
    } llama_token_data_array;"""

    _fields_ = [
        ("data", POINTER(llama_token_data)),
        ("size", c_size_t),
        ("selected", c_int64),
        ("sorted", c_bool),
    ]


class llama_batch(Structure):
    """typedef struct llama_batch {
        int32_t n_tokens; llama_token * token; float * embd; llama_pos * pos;
        int32_t * n_seq_id; llama_seq_id ** seq_id; int8_t * logits;
    } llama_batch;"""

    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


class _llama_model_kv_override_value(Union):
    _fields_ = [
        ("val_i64", c_int64),
        ("val_f64", c_double),
        ("val_bool", c_bool),
        ("val_str", c_char * 128),
    ]


class llama_model_kv_override(Structure):
    """struct llama_model_kv_override {
        enum llama_model_kv_override_type tag; char key[128];
        union { int64_t val_i64; double val_f64; bool val_bool; char val_str[128]; };
    };"""

    _anonymous_ = ("value",)
    _fields_ = [
        ("tag", c_enum),
        ("key", c_char * 128),
        ("value", _llama_model_kv_override_value),
    ]


class llama_model_tensor_buft_override(Structure):
    """struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; };"""

    _fields_ = [("pattern", c_char_p), ("buft", c_void_p)]


class llama_model_params(Structure):
    """struct llama_model_params {
        ggml_backend_dev_t * devices;
        const struct llama_model_tensor_buft_override * tensor_buft_overrides;
        int32_t n_gpu_layers; enum llama_split_mode split_mode;
        enum llama_load_mode load_mode; enum llama_lazy_mode lazy_mode;
        int32_t main_gpu; const float * tensor_split;
        llama_progress_callback progress_callback; void * progress_callback_user_data;
        const struct llama_model_kv_override * kv_overrides;
        bool vocab_only; bool check_tensors; bool use_extra_bufts; bool no_host;
        bool no_alloc; bool load_mtp;
    };"""

    _fields_ = [
        ("devices", c_void_p),
        ("tensor_buft_overrides", POINTER(llama_model_tensor_buft_override)),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_enum),
        ("load_mode", c_enum),
        ("lazy_mode", c_enum),
        ("main_gpu", c_int32),
        ("tensor_split", POINTER(c_float)),
        ("progress_callback", llama_progress_callback),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", POINTER(llama_model_kv_override)),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class llama_sampler_seq_config(Structure):
    """struct llama_sampler_seq_config { llama_seq_id seq_id; struct llama_sampler * sampler; };"""

    _fields_ = [("seq_id", llama_seq_id), ("sampler", c_void_p)]


class llama_context_params(Structure):
    """struct llama_context_params {
        uint32_t n_ctx, n_batch, n_ubatch, n_seq_max, n_rs_seq, n_outputs_max, n_outputs_max_per_seq;
        int32_t n_threads, n_threads_batch;
        enum llama_context_type ctx_type; enum llama_rope_scaling_type rope_scaling_type;
        enum llama_pooling_type pooling_type; enum llama_attention_type attention_type;
        enum llama_flash_attn_type flash_attn_type;
        float rope_freq_base, rope_freq_scale, yarn_ext_factor, yarn_attn_factor,
              yarn_beta_fast, yarn_beta_slow;
        uint32_t yarn_orig_ctx; float defrag_thold;
        ggml_backend_sched_eval_callback cb_eval; void * cb_eval_user_data;
        enum ggml_type type_k; enum ggml_type type_v;
        ggml_abort_callback abort_callback; void * abort_callback_data;
        bool embeddings, offload_kqv, no_perf, op_offload, swa_full, kv_unified;
        struct llama_sampler_seq_config * samplers; size_t n_samplers;
        struct llama_context * ctx_other;
    };"""

    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_enum),
        ("rope_scaling_type", c_enum),
        ("pooling_type", c_enum),
        ("attention_type", c_enum),
        ("flash_attn_type", c_enum),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", ggml_backend_sched_eval_callback),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_enum),
        ("type_v", c_enum),
        ("abort_callback", ggml_abort_callback),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", POINTER(llama_sampler_seq_config)),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),
    ]


class llama_model_quantize_params(Structure):
    """typedef struct llama_model_quantize_params {
        int32_t nthread; enum llama_ftype ftype;
        enum ggml_type output_tensor_type; enum ggml_type token_embedding_type;
        bool allow_requantize; bool quantize_output_tensor; bool only_copy; bool pure;
        bool keep_split; bool dry_run;
        const struct llama_model_imatrix_data * imatrix;
        const struct llama_model_kv_override * kv_overrides;
        const struct llama_model_tensor_override * tt_overrides;
        const int32_t * prune_layers;
        size_t max_buf_size;
    } llama_model_quantize_params;"""

    # imatrix and tt_overrides stay NULL (llama-runtime never passes them): opaque pointers.
    _fields_ = [
        ("nthread", c_int32),
        ("ftype", c_enum),
        ("output_tensor_type", c_enum),
        ("token_embedding_type", c_enum),
        ("allow_requantize", c_bool),
        ("quantize_output_tensor", c_bool),
        ("only_copy", c_bool),
        ("pure", c_bool),
        ("keep_split", c_bool),
        ("dry_run", c_bool),
        ("imatrix", c_void_p),
        ("kv_overrides", POINTER(llama_model_kv_override)),
        ("tt_overrides", c_void_p),
        ("prune_layers", POINTER(c_int32)),
        ("max_buf_size", c_size_t),
    ]


class llama_logit_bias(Structure):
    """typedef struct llama_logit_bias { llama_token token; float bias; } llama_logit_bias;"""

    _fields_ = [("token", llama_token), ("bias", c_float)]


class llama_sampler_chain_params(Structure):
    """typedef struct llama_sampler_chain_params { bool no_perf; } llama_sampler_chain_params;"""

    _fields_ = [("no_perf", c_bool)]


class llama_chat_message(Structure):
    """typedef struct llama_chat_message { const char * role; const char * content; } llama_chat_message;"""

    _fields_ = [("role", c_char_p), ("content", c_char_p)]


class llama_perf_context_data(Structure):
    """struct llama_perf_context_data {
        double t_start_ms, t_load_ms, t_p_eval_ms, t_eval_ms;
        int32_t n_p_eval, n_eval, n_reused;
    };"""

    _fields_ = [
        ("t_start_ms", c_double),
        ("t_load_ms", c_double),
        ("t_p_eval_ms", c_double),
        ("t_eval_ms", c_double),
        ("n_p_eval", c_int32),
        ("n_eval", c_int32),
        ("n_reused", c_int32),
    ]


class llama_perf_sampler_data(Structure):
    """struct llama_perf_sampler_data { double t_sample_ms; int32_t n_sample; };"""

    _fields_ = [("t_sample_ms", c_double), ("n_sample", c_int32)]


GGML_MAX_N_THREADS = 512  # ggml.h: the size of ggml_threadpool_params.cpumask


class ggml_threadpool_params(Structure):
    """struct ggml_threadpool_params {
        bool cpumask[GGML_MAX_N_THREADS]; int n_threads; enum ggml_sched_priority prio;
        uint32_t poll; bool strict_cpu; bool paused;
    };"""

    _fields_ = [
        ("cpumask", c_bool * GGML_MAX_N_THREADS),
        ("n_threads", c_int),
        ("prio", c_enum),
        ("poll", c_uint32),
        ("strict_cpu", c_bool),
        ("paused", c_bool),
    ]


class ggml_backend_feature(Structure):
    """struct ggml_backend_feature { const char * name; const char * value; };"""

    _fields_ = [("name", c_char_p), ("value", c_char_p)]


# C spelling of every struct above, for the layout test and the ABI guard.
C_NAMES: dict[type[ctypes.Structure], str] = {
    llama_token_data: "llama_token_data",
    llama_token_data_array: "llama_token_data_array",
    llama_batch: "llama_batch",
    llama_model_kv_override: "struct llama_model_kv_override",
    llama_model_tensor_buft_override: "struct llama_model_tensor_buft_override",
    llama_model_params: "struct llama_model_params",
    llama_sampler_seq_config: "struct llama_sampler_seq_config",
    llama_context_params: "struct llama_context_params",
    llama_model_quantize_params: "llama_model_quantize_params",
    llama_logit_bias: "llama_logit_bias",
    llama_sampler_chain_params: "llama_sampler_chain_params",
    llama_chat_message: "llama_chat_message",
    llama_perf_context_data: "struct llama_perf_context_data",
    llama_perf_sampler_data: "struct llama_perf_sampler_data",
    ggml_threadpool_params: "struct ggml_threadpool_params",
    ggml_backend_feature: "struct ggml_backend_feature",
}


def field_names(struct: type[ctypes.Structure]) -> list[str]:
    """Field names as C sees them: members of anonymous unions are lifted into the struct."""
    anonymous = set(getattr(struct, "_anonymous_", ()))
    names: list[str] = []
    for name, ctype, *_ in struct._fields_:
        if name in anonymous:
            union: Any = ctype
            names.extend(member[0] for member in union._fields_)
        else:
            names.append(name)
    return names
