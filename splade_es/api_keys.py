"""Who may spend serve's model: the API keys of ``splade-es serve --api-key-file``, checked on
the endpoints that encode (``/_splade/embed/*``, ``/_splade/encode``, ``/_splade/query``,
``/embed_sparse``), and the rule that serve listens beyond this machine only with keys (or when
told explicitly that it may go without).

The keys are secrets: no repr, message or log line holds one, and a presented key is compared
with every key in constant time (``hmac.compare_digest``), so the time an answer takes does
not tell how much of a key was right. The proxy's routes are not checked here: the cluster
authenticates the apps' own credentials, which are forwarded as before.

>>> keys = ApiKeys.parse("# engines\\nk-123\\n\\nk-456\\n")
>>> keys, keys.check("Bearer k-456"), keys.check("Bearer nope"), keys.check(None)
(ApiKeys(2 keys), 'ok', 'wrong', 'missing')
>>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
(True, True, True, False)
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Literal

from .exceptions import ConfigurationError

Verdict = Literal["ok", "missing", "wrong"]


class ApiKeys:
    """The keys a request may carry as ``Authorization: Bearer <key>``."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ConfigurationError("no API key given: an empty key list would refuse everyone")
        self._keys = keys

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        """The keys in the file at ``path`` (``parse``'s format). ``ConfigurationError`` when
        it cannot be read or holds no key."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigurationError(f"API key file {path}: cannot read it ({reason})") from None
        return cls.parse(text, source=f"API key file {path}")

    @classmethod
    def parse(cls, text: str, *, source: str = "API keys") -> ApiKeys:
        """One key per line; blank lines and lines starting with ``#`` are left out."""
        keys: list[bytes] = []
        for number, line in enumerate(text.splitlines(), 1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if any(c.isspace() for c in key):  # never the key itself in the message
                raise ConfigurationError(
                    f"{source}: line {number} has whitespace inside its key; one key per line"
                )
            keys.append(key.encode("utf-8"))
        if not keys:
            raise ConfigurationError(
                f"{source} holds no key (one per line; blank and # lines are left out)"
            )
        return cls(tuple(keys))

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} {'key' if len(self._keys) == 1 else 'keys'})"

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def first(self) -> str:
        """The first key (what ``splade-es register`` hands the cluster)."""
        return self._keys[0].decode("utf-8")

    def check(self, authorization: str | None) -> Verdict:
        """Whether an ``Authorization`` header carries one of the keys: ``missing`` when it
        holds no bearer credential at all, ``wrong`` when its key is none of them."""
        presented = bearer_credential(authorization)
        if presented is None:
            return "missing"
        given = presented.encode("utf-8")
        # Every key compared, none skipped: the time taken does not say which one matched.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return "ok" if any(matches) else "wrong"


def bearer_credential(authorization: str | None) -> str | None:
    """The credential of a ``Bearer`` ``Authorization`` header (the scheme is
    case-insensitive, RFC 9110 11.1); None when there is none.

    >>> bearer_credential("bearer  abc "), bearer_credential("Basic dXNlcg==")
    ('abc', None)
    """
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps serve on this machine: a loopback address or
    ``localhost``. Any other name counts as reachable from outside (it is not resolved here:
    a name may resolve differently when the server binds)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_access_control(
    host: str, keys: ApiKeys | None, allow_unauthenticated: bool = False
) -> None:
    """``ConfigurationError`` when serve would listen on ``host`` beyond this machine with no
    API keys and no explicit ``allow_unauthenticated``: whoever reaches the port could spend
    the model (and the GPU) without limit."""
    if keys is not None or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigurationError.bad_value(
        "listen",
        host,
        "is not a loopback address: give API keys (--api-key-file, ServeConfig.api_keys) so "
        "that only their holders can encode, or allow unauthenticated access explicitly "
        "(--allow-unauthenticated, ServeConfig.allow_unauthenticated)",
    )
