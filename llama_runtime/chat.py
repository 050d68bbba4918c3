"""Text-side helpers of :class:`~llama_runtime.llama.Llama`: chat templates and stop strings.

Chat formatting is llama.cpp's own ``llama_chat_apply_template``: it recognises the model's
template among the ones it has built in (ChatML, Llama 2/3, Mistral, Gemma, ...); it has no
Jinja interpreter, so a template it does not recognise is refused with :class:`ChatTemplateError`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import ChatTemplateError, PromptError
from .native.buffer import call_sized
from .native.structs import llama_chat_message

if TYPE_CHECKING:
    from .native import Native


def encode_text(text: str | bytes, what: str = "prompt") -> bytes:
    """UTF-8 bytes for llama.cpp, which must never see invalid UTF-8 or a NUL byte."""
    if isinstance(text, bytes):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PromptError(f"the {what} bytes are not valid UTF-8 ({exc}); decode them "
                              "with the right encoding and pass a str") from exc
        data = text
    elif isinstance(text, str):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PromptError(f"the {what} cannot be encoded as UTF-8 ({exc}): it holds lone "
                              "surrogates, e.g. from bytes decoded with errors='surrogateescape'"
                              ) from exc
    else:
        raise TypeError(f"the {what} must be str or bytes, not {type(text).__name__}")
    if b"\0" in data:
        raise PromptError(f"the {what} contains a NUL character, which llama.cpp cannot take")
    return data


def builtin_templates(native: Native) -> list[str]:
    """Names of the chat templates this llama.cpp knows (``chatml``, ``llama3``, ...)."""
    n = native.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * max(n, 1))()
    n = native.llama_chat_builtin_templates(names, n)
    return [(names[i] or b"").decode() for i in range(n)]


def format_chat(native: Native, template: str, messages: Sequence[Mapping[str, str]], *,
                add_assistant: bool = True) -> str:
    """The prompt text of ``messages`` through ``template`` (a Jinja text or a built-in name)."""
    encoded = [(encode_text(m["role"], "chat role"), encode_text(m["content"], "chat message"))
               for m in _checked(messages)]
    arr = (llama_chat_message * len(encoded))(*(llama_chat_message(r, c) for r, c in encoded))
    tmpl = encode_text(template, "chat template")
    buf, n = call_sized(lambda out, size: native.llama_chat_apply_template(
        tmpl, arr, len(encoded), add_assistant, out, size), ctypes.create_string_buffer,
        2 * sum(len(r) + len(c) for r, c in encoded) + 256, returns_length=True)
    if n < 0:
        shown = template if len(template) <= 80 else template[:77] + "..."
        raise ChatTemplateError(
            f"llama.cpp does not support this chat template: {shown!r}. It only knows its "
            f"built-in ones ({', '.join(builtin_templates(native))}); pass one of these names "
            "as chat(..., template=NAME), or format the prompt yourself and call generate()"
        )
    if n <= len(buf):
        return buf.raw[:n].decode("utf-8", "replace")
    raise ChatTemplateError("llama_chat_apply_template kept asking for a larger buffer")


def _checked(messages: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    out = list(messages)
    if not out:
        raise PromptError("chat() needs at least one message")
    for m in out:
        if not isinstance(m, Mapping) or not {"role", "content"} <= m.keys():
            raise PromptError(f"each chat message must be a dict with 'role' and 'content', not {m!r}")
    return out


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back what may be the start of one.

    A stop string may arrive split over several tokens ("\\nUs" + "er:"): text that could still
    become a stop string is not released until the next piece decides. The stop string itself
    is never released.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """What of ``pending + text`` is safe to release now; sets ``stopped`` on a match."""
        if not self.stops:
            return text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        keep = max((self._overlap(s) for s in self.stops), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _overlap(self, stop: str) -> int:
        """Length of the longest end of ``pending`` that begins ``stop``."""
        for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:k]):
                return k
        return 0
