"""OpenAI-compatible request models (validated at the edge) and error objects.

Requests are parsed in strict mode from the raw body, so wrong types ("5" for an int) are
rejected as the OpenAI API does, instead of being coerced. Unknown fields are ignored, as vLLM
does, so clients that send extra options (`user`, `logit_bias`, ...) still work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Prompt = str | list[int] | list[str] | list[list[int]]
# OpenAI's chat roles ("function" is deprecated there and unused by chat templates).
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    # No NaN or Infinity: JSON has neither, and a NaN temperature would poison sampling.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

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

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown role {role[:40]!r}; use one of: {', '.join(CHAT_ROLES)}")
        return role

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
        return RequestError(f"'{_path(first['loc'])}' is required", param=param,
                            code="missing_parameter")
    if len(same_param) > 1 and param == "prompt":  # one error per union variant: say what fits
        return RequestError("'prompt' must be a string or a list of token ids", param=param)
    where, msg = _explain(first, same_param)
    return RequestError(f"invalid '{where}': {msg}", param=param)


def _explain(first: dict, errors: list[dict]) -> tuple[str, str]:
    """The field path and message; a union (str | list) names its types, not one variant's."""
    loc = first["loc"]
    cut = next((i for i, part in enumerate(loc) if _is_type_tag(part)), None)
    if cut is None:
        return _path(loc), _msg(first)
    alternatives = [e for e in errors if e["loc"][:cut] == loc[:cut] and len(e["loc"]) > cut]
    deepest = max(alternatives, key=lambda e: len(e["loc"]))
    if len(deepest["loc"]) > cut + 1:  # the value had one variant's shape: its inner error
        return _path([p for p in deepest["loc"] if not _is_type_tag(p)]), _msg(deepest)
    types = list(dict.fromkeys(str(e["loc"][cut]) for e in alternatives))
    return _path(loc[:cut]), f"expected {' or '.join(types)}"


def _is_type_tag(part: object) -> bool:
    # pydantic puts the union variant in the location: ('stop', 'list[str]')
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _msg(error: dict) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


def _path(loc: tuple | list) -> str:
    """('messages', 0, 'role') -> messages[0].role: the field a client must fix."""
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
