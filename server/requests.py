"""Request validation in `tradeoff serve`: a parsed OpenAI request becomes prompt ids and
sampling params, or a RequestError (an OpenAI error object, 4xx). Bad requests are refused
here, before they reach the engine, so they cannot fail or stall other requests."""

from __future__ import annotations

from typing import Any

from engine.engine import Engine
from engine.sequence import SamplingParams
from server.openai_schema import ChatCompletionRequest, ChatMessage, RequestError, SamplingRequest

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SAMPLING_EPS = 1e-5  # temperatures below this are greedy (as vLLM): 1/T would overflow
# Far above any context window's prompt as JSON; a bigger body is refused before it is held in
# memory, instead of being read whole and then found too long.
MAX_BODY_BYTES = 32 * 2**20


async def read_body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or RequestError 413 as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads declare no length: count them
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(f"the request body is over {limit // 2**20} MiB ({size} bytes or more); "
                        "send a shorter prompt", code="request_too_large", status=413)


class RequestValidator:
    """Checks a request against the served model: name, prompt, token ids, context, KV budget."""

    def __init__(self, engine: Engine, loaded: Any, model_name: str) -> None:
        self.engine, self.loaded, self.model_name = engine, loaded, model_name
        self.vocab_size = _vocab_size(loaded)

    def prepare(self, req: SamplingRequest) -> tuple[list[int], SamplingParams]:
        """The prompt ids and sampling params of a valid request; RequestError otherwise."""
        if req.model is not None and req.model != self.model_name:
            raise RequestError(f"The model `{req.model}` does not exist; this server serves "
                               f"`{self.model_name}`", "model", "model_not_found", status=404)
        if isinstance(req, ChatCompletionRequest):
            prompt_ids = self._chat_prompt_ids(req.messages)
        else:
            prompt_ids = self._completion_prompt_ids(req.prompt)
        return prompt_ids, self._sampling(req, len(prompt_ids))

    def _completion_prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise RequestError("batched prompts are not supported; send one prompt per "
                                   "request", "prompt")
            prompt = prompt[0]
        if not prompt:  # "" or []: as vLLM, nothing to continue from is a bad request
            raise RequestError("'prompt' must not be empty", "prompt")
        if isinstance(prompt, str):
            return self.loaded.encode(prompt)
        if not all(0 <= t < self.vocab_size for t in prompt):
            raise RequestError(f"token ids must be in [0, {self.vocab_size})", "prompt")
        return prompt

    def _chat_prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        tokenizer = getattr(self.loaded, "tokenizer", None)
        if not getattr(tokenizer, "chat_template", None):  # e.g. the builtins: a plain template
            return self.loaded.encode("".join(f"{m.role}: {m.text}\n" for m in messages)
                                      + "assistant:")
        conversation = [{"role": m.role, "content": m.text} for m in messages]
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as exc:  # the template rejects the conversation (e.g. role order)
            raise RequestError(f"cannot render messages with the chat template: {exc}",
                               "messages") from None
        return list(tokenizer.encode(text, add_special_tokens=False))  # the template has BOS

    def _sampling(self, req: SamplingRequest, num_prompt: int) -> SamplingParams:
        max_tokens = self._max_tokens(req, num_prompt)
        if req.min_tokens > max_tokens:
            raise RequestError(f"min_tokens ({req.min_tokens}) must be <= max_tokens "
                               f"({max_tokens})", "min_tokens")
        temperature = req.temperature if req.temperature >= SAMPLING_EPS else 0.0
        # The engine has no min_tokens: min_tokens == max_tokens is exactly ignore_eos.
        ignore_eos = req.ignore_eos or req.min_tokens >= max_tokens
        return SamplingParams(max_new_tokens=max_tokens, temperature=temperature,
                              top_p=req.top_p, ignore_eos=ignore_eos, seed=req.seed)

    def _max_tokens(self, req: SamplingRequest, num_prompt: int) -> int:
        # A request over the KV budget alone would be failed by the engine; refuse it here.
        limit = min(self.loaded.max_context_tokens, self.engine.kv_budget_tokens)
        requested = _requested_max_tokens(req)
        if requested is None:  # chat: the room left, as vLLM
            requested = max(1, limit - num_prompt)
        if num_prompt + requested > limit:
            raise RequestError(_too_long_message(num_prompt, requested, limit, self.loaded),
                               "max_tokens" if num_prompt < limit else "prompt",
                               "context_length_exceeded")
        return requested


def _requested_max_tokens(req: SamplingRequest) -> int | None:
    if isinstance(req, ChatCompletionRequest):
        return req.max_completion_tokens or req.max_tokens
    return DEFAULT_COMPLETION_MAX_TOKENS if req.max_tokens is None else req.max_tokens


def _too_long_message(num_prompt: int, max_tokens: int, limit: int, loaded: Any) -> str:
    what = "maximum context length" if limit == loaded.max_context_tokens else "KV-cache budget"
    return (f"This model's {what} is {limit} tokens. However, you requested "
            f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} "
            "for the completion). Please reduce the prompt or max_tokens.")


def _vocab_size(loaded: Any) -> int:
    config = loaded.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.vocab_size)
