"""The strict pydantic base that every dinowm config section derives from.

It lives apart from ``config.py`` so that section modules (``planning_config.py``) and the top-level schema can
both build on it without importing each other in a cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """Unknown keys fail at load time (naming the key); assignments are validated like loaded values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
