"""A profile's YAML and validation errors as one line naming the field and the fix.

Pure text: the schema (which sections are tagged unions, and the models behind each tag) is
given by `experiments.spec.profiles`, which owns the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from pydantic import BaseModel, ValidationError


def yaml_error(exc: yaml.YAMLError) -> str:
    """`invalid YAML at line N: problem`."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


@dataclass(frozen=True)
class ErrorSchema:
    """What the messages need to know of a model tree: its root, its tagged-union sections
    (section -> tag field), the model behind each tag, and plain nested sections."""

    root: type[BaseModel]
    union_fields: dict[str, str]
    tags: dict[str, dict[str, type[BaseModel]]]
    sections: dict[str, type[BaseModel]] = field(default_factory=dict)

    def message(self, exc: ValidationError, data: dict) -> str:
        """The first pydantic error as `field.path: what to do (got value)`."""
        errors = exc.errors()
        # A misspelt field shows up as 'missing' plus 'unknown'; the unknown one points at the typo.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        path = self._clean_loc(err["loc"])
        where = ".".join(path) or "(top level)"
        return f"{where}: {self._error_text(err, path, data)}"

    def _clean_loc(self, loc: tuple) -> list[str]:
        # Discriminated unions put the tag in the location ('prompt_tokens', 'uniform', 'max'),
        # and dict keys add '[key]'; neither is a field the user wrote.
        out: list[str] = []
        for part in loc:
            is_tag = bool(out) and out[-1] in self.union_fields and len(out) == 1
            if part == "[key]" or (is_tag and part in self.tags[self.union_fields[out[-1]]]):
                continue
            out.append(str(part))
        return out

    def _error_text(self, err: dict, path: list[str], data: dict) -> str:
        kind, ctx = err["type"], err.get("ctx", {})
        if kind == "literal_error":
            return f"must be one of {_unquote(ctx['expected'])} (got {err['input']!r})"
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            tag_field = self.union_fields.get(path[-1], "kind") if path else "kind"
            # pydantic names the tags of the union at hand (nested unions share a tag field).
            tags = (_unquote(ctx["expected_tags"]) if "expected_tags" in ctx
                    else ", ".join(self.tags[tag_field]))
            got = f"got {ctx['tag']!r}" if "tag" in ctx else "it is missing"
            return f"{tag_field} must be one of {tags} ({got})"
        if kind == "missing":
            return "required field is missing; add it"
        if kind == "extra_forbidden":
            return f"unknown field; allowed fields: {', '.join(self._allowed_fields(path[:-1], data))}"
        if kind == "value_error":
            return str(ctx.get("error", err["msg"]))
        return _generic_text(err)

    def _allowed_fields(self, parent: list[str], data: dict) -> list[str]:
        """The fields the model at `parent` accepts, to suggest a fix for a misspelt one."""
        model: type[BaseModel] | None = self.root
        if parent and parent[0] in self.union_fields:
            tag_field = self.union_fields[parent[0]]
            section = data.get(parent[0])
            tag = section.get(tag_field) if isinstance(section, dict) else None
            model = self.tags[tag_field].get(tag) if isinstance(tag, str) else None
        elif parent and parent[0] in self.sections:
            model = self.sections[parent[0]]
        return list(model.model_fields) if model is not None else []


def _generic_text(err: dict) -> str:
    msg = err["msg"].replace("Input should be", "must be")
    value = err.get("input")
    return msg if isinstance(value, dict) else f"{msg} (got {value!r})"


def _unquote(expected: str) -> str:
    return expected.replace("'", "").replace(" or ", ", ")
