"""The rule for request ids, which become a folder name in store keys and appear in log lines."""

from __future__ import annotations

import logging
import re
from typing import TypeGuard

from pipeline.errors import BadRequestError

logger = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""No '/', '.', whitespace or control characters, so an id is one safe path segment."""
REQUEST_ID_RULE = "1 to 64 letters, digits, '_' or '-'"

_MAX_REPR_CHARS = 80
"""Maximum length of an invalid id's repr in an error message."""


def is_valid_request_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and REQUEST_ID_PATTERN.fullmatch(value) is not None


def check_request_id(value: object, stage: str) -> str:
    """Return ``value`` if it is a valid request id.

    Raises :class:`BadRequestError` naming ``stage``, the field ``request_id`` and the rule.
    The message shows at most the first 80 characters of the id's repr.
    """
    if is_valid_request_id(value):
        return value
    if value is None:
        problem = "the request is missing the field 'request_id'"
    elif not isinstance(value, str):
        problem = f"the field 'request_id' must be a string, not {type(value).__name__}"
    else:
        value_repr = repr(value)
        if len(value_repr) > _MAX_REPR_CHARS:
            value_repr = f"{value_repr[:_MAX_REPR_CHARS]}... ({len(value)} characters)"
        problem = f"the field 'request_id' is {value_repr}, which is invalid"
    raise BadRequestError(f"{stage}: {problem}; send a request id of {REQUEST_ID_RULE}.")
