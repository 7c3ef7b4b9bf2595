"""Tokens: digests only, 401 and 403 with reasons, the scope table, the write rate limit."""

from __future__ import annotations

import pytest

from pollhook.errors import ConfigError, Forbidden, RateLimited, Unauthorized
from pollhook.server.tokens import Action, Authenticator, Principal, RateLimiter, Scope, Token

ADMIN = "adm-" + "a" * 40
CLIENT = "cli-" + "b" * 40
VIEWER = "rea-" + "c" * 40


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(
        [
            Token.create("ops", ADMIN, "admin"),
            Token.create("acme", CLIENT, "subscribe"),
            Token.create("grafana", VIEWER, "read"),
        ]
    )


def test_a_bearer_header_names_the_token_and_its_scope(auth: Authenticator) -> None:
    assert auth.from_header(f"Bearer {ADMIN}") == Principal("ops", Scope.ADMIN)
    assert auth.from_header(f"bearer   {CLIENT} ") == Principal("acme", Scope.SUBSCRIBE)
    assert auth.authenticate(VIEWER) == Principal("grafana", Scope.READ)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing token: send Authorization: Bearer TOKEN"),
        ("", "missing token"),
        (f"Basic {ADMIN}", "the Authorization header must be 'Bearer TOKEN'"),
        ("Bearer", "must be 'Bearer TOKEN'"),
        (f"Bearer {ADMIN} extra", "must be 'Bearer TOKEN'"),
        (f"Bearer {ADMIN}x", "unknown token"),
        (f"Bearer {ADMIN[:-1]}", "unknown token"),
    ],
)
def test_a_missing_or_unknown_token_is_a_401_with_a_reason(
    auth: Authenticator, header: str | None, reason: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        auth.from_header(header)
    assert reason in str(caught.value)
    assert ADMIN not in str(caught.value)
    assert caught.value.status == 401
    assert caught.value.headers() == {"WWW-Authenticate": 'Bearer realm="pollhook"'}


def test_no_token_is_kept_or_shown(auth: Authenticator) -> None:
    for token, raw in zip(auth.tokens, (ADMIN, CLIENT, VIEWER), strict=True):
        assert raw not in repr(token) and raw not in str(token)
        assert raw.encode() not in token.digest and len(token.digest) == 32
        assert "digest" not in repr(token)
    assert not any(raw in repr(auth.tokens) for raw in (ADMIN, CLIENT, VIEWER))


# the scope table of tokens.py, cell by cell
TABLE = {
    Action.READ_SUBSCRIPTIONS: {"read", "subscribe", "admin"},
    Action.CREATE_SUBSCRIPTION: {"subscribe", "admin"},
    Action.CHANGE_SUBSCRIPTION: {"subscribe", "admin"},
    Action.VIEW_CONSOLE: {"read", "admin"},
    Action.ACT_IN_CONSOLE: {"admin"},
}


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("scope", list(Scope))
def test_each_scope_may_do_what_the_table_says(scope: Scope, action: Action) -> None:
    who = Principal("someone", scope)
    if scope.value in TABLE[action]:
        who.require(action)
        return
    with pytest.raises(Forbidden) as caught:
        who.require(action)
    assert caught.value.status == 403
    assert str(caught.value).startswith(f"token 'someone' has scope {scope.value!r}; to ")


def test_a_403_says_which_scope_would_do() -> None:
    with pytest.raises(Forbidden, match="to create a subscription a token needs scope"
                       " admin or subscribe"):  # fmt: skip
        Principal("grafana", Scope.READ).require(Action.CREATE_SUBSCRIPTION)


def test_a_subscribe_token_sees_only_its_own_subscriptions() -> None:
    assert Principal("acme", Scope.SUBSCRIBE).sees("acme")
    assert not Principal("acme", Scope.SUBSCRIBE).sees("globex")
    assert Principal("ops", Scope.ADMIN).sees("globex")
    assert Principal("grafana", Scope.READ).sees("globex")


@pytest.mark.parametrize(
    ("name", "token", "scope", "words"),
    [
        ("ops", "short", "admin", "at least 16 characters"),
        ("ops", " " + ADMIN, "admin", "without surrounding spaces"),
        ("ops", ADMIN, "root", "scope 'root' is not one of admin, subscribe, read"),
        ("bad name", ADMIN, "admin", "name 'bad name' must be"),
        ("", ADMIN, "admin", "name '' must be"),
    ],
)
def test_a_bad_token_entry_is_a_config_error_that_never_shows_the_token(
    name: str, token: str, scope: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        Token.create(name, token, scope)
    assert token.strip() not in str(caught.value) or len(token) < 16


def test_two_entries_with_one_name_or_one_token_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="the name 'ops' is used twice"):
        Authenticator([Token.create("ops", ADMIN, "admin"), Token.create("ops", CLIENT, "read")])
    with pytest.raises(ConfigError, match="'ops' and 'dup' have the same token"):
        Authenticator([Token.create("ops", ADMIN, "admin"), Token.create("dup", ADMIN, "read")])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_writes_beyond_the_burst_are_a_429_with_retry_after() -> None:
    clock = Clock()
    limit = RateLimiter(per_second=0.5, burst=3, clock=clock)
    for _ in range(3):
        limit.take("acme")
    with pytest.raises(RateLimited) as caught:
        limit.take("acme")
    assert caught.value.status == 429
    assert caught.value.retry_after == 2
    assert caught.value.headers() == {"Retry-After": "2"}
    assert str(caught.value) == (
        "too many changes with token 'acme': retry in 2s (at most 3 at once, then 0.5 per second)"
    )
    limit.take("globex")  # each token has its own bucket
    clock.now += 1.5
    with pytest.raises(RateLimited) as caught:
        limit.take("acme")
    assert caught.value.retry_after == 1  # three quarters of a write refilled
    clock.now += 0.5
    limit.take("acme")  # refilled after 2 s, as Retry-After said
    with pytest.raises(RateLimited):
        limit.take("acme")


def test_the_bucket_refills_up_to_the_burst_only() -> None:
    clock = Clock()
    limit = RateLimiter(per_second=1.0, burst=2, clock=clock)
    clock.now += 3600
    limit.take("acme")
    limit.take("acme")
    with pytest.raises(RateLimited):
        limit.take("acme")


def test_a_clock_going_back_refills_nothing() -> None:
    clock = Clock()
    limit = RateLimiter(per_second=1.0, burst=1, clock=clock)
    limit.take("acme")
    clock.now -= 100
    with pytest.raises(RateLimited, match="retry in 1s"):
        limit.take("acme")
