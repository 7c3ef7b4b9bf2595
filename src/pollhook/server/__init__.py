"""The parts of pollhook's HTTP server that let URLs be registered from outside the config.

Modules, each with one job and no import from the rest of pollhook but
`pollhook.errors`:

    ssrf             the guard every API-registered URL passes: `check_url` at registration,
                     `guarded_session` (GuardedConnector + GuardedResolver) at every connection
    tokens           bearer tokens kept as digests, scopes, the per-token write limit
    verify           the WebSub verification of intent (`verify_intent`)
    lease            subscription states and leases, pure functions of `now`
    webhook_secrets  `whsec_` secrets and their rotation with a 24-hour overlap
    openapi          the OpenAPI 3.1 document (`DOCUMENT`), served at /v1/openapi.json
    validate         request bodies checked against that document, 400s that name the field

How the rest of pollhook is to use them (not wired yet):

1. Config (`server:` block). `listen` (127.0.0.1 unless a host is given);
   `tokens:` each entry becomes `tokens.Token.create(name, token, scope)` as
   soon as it is read, so the raw token is never kept (a ConfigError from it
   gets the file and line added by the loader); `Authenticator(tokens)`
   checks names and tokens are unique. `allow_networks:` becomes
   `ssrf.NetworkPolicy.from_config(entries)`; absent means public only.

2. Store: two tables, created by one migration.
   `api_subscriptions(id TEXT PRIMARY KEY, owner TEXT NOT NULL, url TEXT NOT NULL,
   topic TEXT NOT NULL, sources TEXT, events TEXT, format TEXT NOT NULL, when_expr TEXT,
   status TEXT NOT NULL, lease_seconds INTEGER NOT NULL, lease_ends_at REAL,
   verifying INTEGER NOT NULL DEFAULT 0, error TEXT, created_at REAL NOT NULL,
   UNIQUE (owner, url, topic))` (sources and events as JSON lists, NULL for
   all; status a `lease.Status`; owner the token's name; `verifying` set while
   a verification runs), and `api_subscription_secrets(subscription_id TEXT
   NOT NULL REFERENCES api_subscriptions(id) ON DELETE CASCADE, secret TEXT
   NOT NULL, retires_at REAL)`, rows as `webhook_secrets.StoredSecret`.
   Secrets are stored as they are (they sign); tokens never are.

3. API handlers (aiohttp web, one `ApiError` handler turning
   `exc.status`, `{"error": str(exc)}` and `exc.headers()` into the answer):
   every request: `principal = auth.from_header(request.headers.get("Authorization"))`;
   then `principal.require(Action...)`; writes also `limiter.take(principal.name)`.
   A subscription another token made is a NotFound for a `subscribe` token
   (`principal.sees(owner)`).
   - POST /v1/subscriptions: `new = validate.parse_create(body, source_names,
     config.jmespath_problem)`; `await ssrf.check_url(new.url, policy)`
     (RefusedURLError becomes BadRequest(str(exc))); Conflict if (owner, url,
     topic) exists; insert as `pending` with `webhook_secrets.new_secret()`;
     answer 202 `{id, status: "pending", secret, lease_seconds}`; start the
     verification task.
   - Verification task (bounded, e.g. 50 at once, owned by the server):
     `await verify.verify_intent(guarded, URL(url), new.topic, new.lease_seconds,
     user_agent=fetch.USER_AGENT)`; then status `lease.after_verification(...)`,
     `lease_ends_at = lease.lease_ends_at(now, lease_seconds)` when it passed,
     `error = str(exc)` when it failed. Subscriptions found `verifying` at
     start-up (the process died) are verified again.
   - GET list / one: status shown as `lease.status_at(stored, ends_at, now)`;
     never a secret.
   - DELETE: delete the row and its pending deliveries in one transaction,
     then `worker.reconfigure(...)`: nothing new starts for it at once.
   - POST .../rotate-secret: `webhook_secrets.rotate(stored, now)`; answer
     200 `{id, secret, previous_secret_retires_at}`.
   - POST .../renew: `validate.parse_renew(body)`; Conflict while `verifying`;
     202, then a verification task; a failed renewal leaves the lease running.
   - GET /v1/openapi.json: `openapi.DOCUMENT`, no token needed.

4. Delivery. An active API subscription is a `Subscriber` like a YAML one,
   named `api:<id>` (a colon no YAML name can have), with
   `secrets=signing_secrets(stored, now)`, its sources, events, format and
   when, and the default retry schedule. The set of them is rebuilt and
   handed to `DeliveryWorker.reconfigure` and to the poller's routing on every
   change and at the next deadline (the earliest `lease_ends_at` or
   `retires_at`), so events are routed to a subscription only while
   `lease.delivers(...)`. The worker sends API subscribers' requests through
   one `ssrf.guarded_session(policy, limit=..., keepalive_timeout=...)`,
   made beside its plain session; YAML subscribers keep the plain one (the
   operator may point them at localhost). A 410 from an API subscriber sets
   its status to `gone` instead of pausing it. Connect-time refusals are
   ordinary failed attempts (`RefusedURLError: url refused for host ...`).

5. Console: `Action.VIEW_CONSOLE` for pages, `Action.ACT_IN_CONSOLE` for
   replay and resume; sign-in with `auth.authenticate(form_token)`.
"""
