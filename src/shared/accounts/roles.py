"""The one role vocabulary: what a principal (a JWT's `role` claim, an API key's role) may do.

A Literal rather than an enum, so that a pydantic model with a `role` field documents it inline as the
two strings the API speaks.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Role = Literal["user", "admin"]
USER: Final = "user"  # its own resources only
ADMIN: Final = "admin"  # everyone's resources, and the admin routes
ROLES: Final[tuple[Role, ...]] = get_args(Role)


def as_role(value: object) -> Role | None:
    """`value` as a Role, or None when it is not one (roles are case-sensitive strings)."""
    return USER if value == USER else ADMIN if value == ADMIN else None
