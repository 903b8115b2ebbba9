"""Side-by-side benchmarks: keyless-m2m's ``TokenManager`` against Authlib's
``AsyncOAuth2Client`` and httpx-auth's ``OAuth2ClientCredentials``.

Run ``python -m benchmarks`` (or ``nox -s bench``); ``--quick`` for a short version,
``--plot PATH`` to draw the latency percentiles of the expiry-under-load scenario. All
libraries run in one process, on asyncio, against the same loopback token endpoint
(:class:`keyless_m2m.testing.authorization_server.AuthorizationServer`) answering after
50 ms. See ``docs/benchmarks.md`` for what each scenario measures and the results.
"""
