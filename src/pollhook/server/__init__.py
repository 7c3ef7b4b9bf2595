"""What pollhook's HTTP server needs to accept subscriptions from outside its config.

`ssrf`: the guard every API-registered URL passes, at registration and at
every connection. `tokens`: bearer tokens, their scopes and write limits.
`verify`: the WebSub verification of intent. `lease`: subscription states
and leases. `webhook_secrets`: signing secrets and their rotation.
"""
