"""Who may reach a MedP server: the rule for binding beyond loopback, and where the key lives
(docs/security.md). Used by ``medp serve`` and ``medp ui``; the server's guard reads the key."""

from __future__ import annotations

import ipaddress

KEY_ENV = "MEDP_API_KEY"
"""The environment variable that holds the API key (never a command line: ``ps`` shows those)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, key: str | None, allow_no_key: bool) -> str | None:
    """Refuse (ValueError) to bind beyond loopback without a key; -> a warning to print, or None."""
    if key or is_loopback(host):
        return None
    if not allow_no_key:
        raise ValueError(f"refusing to serve on {host} without an API key: anyone who can reach it could use it. "
                         f"Set one with --api-key KEY or {KEY_ENV}=KEY (clients send 'Authorization: Bearer KEY'), "
                         "or pass --allow-no-key if the network itself is trusted")
    return (f"WARNING: serving on {host} WITHOUT an API key (--allow-no-key): anyone who can reach this address "
            "can use the model")
