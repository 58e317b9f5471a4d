"""OpenAI-compatible request models (validated at the edge) and error objects.

Requests are parsed in strict mode from the raw body, so wrong types ("5" for an int) are
rejected as the OpenAI API does, instead of being coerced. Unknown fields are ignored, as vLLM
does, so clients that send extra options (`user`, `logit_bias`, ...) still work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Prompt = str | list[int] | list[str] | list[list[int]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch generators accept
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens
    min_tokens: int = Field(0, ge=0)  # vLLM's extension; honoured when it equals max_tokens
    n: int = Field(1, ge=1, le=1)  # one choice per request

    @property
    def stop_strings(self) -> list[str]:
        """`stop` as a list without empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    prompt: Prompt


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: str
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI error object with `status`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def error_body(message: str, err_type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def parse_request(model: type[SamplingRequest], body: bytes) -> Any:
    """Validate a raw JSON body as `model`; bad input raises RequestError."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _to_request_error(exc) from None


def _to_request_error(exc: ValidationError) -> RequestError:
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "json_invalid":
        return RequestError(f"malformed JSON body: {first['msg']}", code="json_invalid")
    if not first["loc"]:
        return RequestError("the request body must be a JSON object")
    param = str(first["loc"][0])
    same_param = [e for e in errors if e["loc"] and e["loc"][0] == param]
    if first["type"] == "missing":
        return RequestError(f"'{param}' is required", param=param, code="missing_parameter")
    if len(same_param) > 1 and param == "prompt":  # one error per union variant: say what fits
        return RequestError("'prompt' must be a string or a list of token ids", param=param)
    return RequestError(f"invalid '{param}': {first['msg']}", param=param)
