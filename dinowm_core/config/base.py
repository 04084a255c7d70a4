"""Config plumbing: the strict base model every section derives from, and readable validation errors."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

# The reference hard-codes this: every DINO encoder input is resized to (img_size // 16) * patch_size,
# and the VQ-VAE decoder upsamples its patch grid by 16 (two x4 stages).
DECODER_SCALE = 16


class ConfigError(ValueError):
    """A config could not be built; the message names the offending key."""


def format_errors(e: ValidationError | list[dict[str, Any]]) -> str:
    """A pydantic validation error (or some of its ``errors()``) as one line per problem, each starting with
    the dotted key."""
    lines = []
    for err in e.errors() if isinstance(e, ValidationError) else e:
        loc = ".".join(str(p) for p in err["loc"]) or "<config>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif err["type"] == "value_error":
            lines.append(msg)  # our validators' messages start with the key they are about
        else:
            lines.append(f"{loc}: {msg} (got {err['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


class ConfigModel(BaseModel):
    """Unknown keys fail at load time (naming the key); assignments are validated like loaded values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Validate a plain mapping; raises :class:`ConfigError` naming every offending key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_errors(e)) from None

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Validate a JSON document; raises :class:`ConfigError` naming every offending key."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise ConfigError(format_errors(e)) from None
