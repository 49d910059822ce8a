"""Who may call a route: the access levels a route declaration (gateway.routing) names, what each means
for each role, and the API key a request was made with.

The auth middleware enforces the matched route's level; a route without a declaration is admin-only (fail
closed) and logged, and tests/integration/test_access.py fails for it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from aiohttp import web

from shared.accounts import api_keys


class Access(Enum):
    PUBLIC = "public"  # no token needed
    AUTHENTICATED = "authenticated"  # any valid token; reads nothing owned, or creates a resource of the caller
    USER = "user"  # any valid token; a user reaches its own resources (others' are 404), an admin everyone's
    OWN = "own"  # any valid token; the caller's own resources only, an admin's too (a personal stream)
    ADMIN = "admin"  # the admin role only (403 for a user)


# What each level gives a caller with no token, a `user` and an `admin` (the columns of the docs' table).
CELLS: Final[Mapping[Access, tuple[str, str, str]]] = {
    Access.PUBLIC: ("yes", "yes", "yes"),
    Access.AUTHENTICATED: ("401", "yes", "yes"),
    Access.USER: ("401", "own", "all"),
    Access.OWN: ("401", "own", "own"),
    Access.ADMIN: ("401", "403", "yes"),
}


def api_key_id(request: web.Request) -> str | None:
    """The API key an authenticated request was made with (the auth middleware verified it), None for a JWT.

    Stored with work that runs later as its owner, whose standing is then checked again.
    """
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    return api_keys.key_id(token.strip())
