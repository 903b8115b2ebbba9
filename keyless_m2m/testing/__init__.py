"""Test doubles and contract checks shipped for users' own test suites.

The test kit's own doubles, of this library's protocols:

- :mod:`.authorization_server`: ``AuthorizationServer``, a real OAuth 2.0 server on loopback;
- :mod:`.signers`: ``InMemorySigner``, a signer over a throwaway key;
- :mod:`.pytest_plugin`: the ``authorization_server`` and ``in_memory_signer`` fixtures;
- :mod:`.contract`: ``check_signer`` and ``check_token_cache``, for your own signers and caches.

Apart from them, :mod:`.emulators` holds the emulators of other vendors' key services
(``FakeKeyVault``, ``FakeCloudKms``), on one loopback-server base. Every double takes faults
the same way: ``fail_next(*faults)`` with fault objects, and ``clear_faults()``.

Each module imports its optional dependencies only when imported, for example
``from keyless_m2m.testing.emulators.azure_key_vault import FakeKeyVault``.
"""
