"""Test doubles and contract checks shipped for users' own test suites.

The test kit's own doubles, of this library's protocols:

- :mod:`.authorization_server`: ``AuthorizationServer``, a real OAuth 2.0 server on loopback;
- :mod:`.signers`: ``InMemorySigner``, a signer over a throwaway key;
- :mod:`.clock`: ``ManualClock``, the library's clock under the test's control (also
  ``from keyless_m2m.testing import ManualClock``);
- :mod:`.pytest_plugin`: the ``authorization_server``, ``in_memory_signer`` and
  ``manual_clock`` fixtures;
- :mod:`.contract`: ``check_signer`` and ``check_token_cache``, for your own signers and caches.

Apart from them, :mod:`.emulators` holds the emulators of other vendors' key services
(``FakeKeyVault``, ``FakeCloudKms``), on one loopback-server base. Every double takes faults
the same way: ``fail_next(*faults)`` with fault objects, and ``clear_faults()``.

Each module imports its optional dependencies only when imported, for example
``from keyless_m2m.testing.emulators.azure_key_vault import FakeKeyVault``. The clock needs
nothing beyond the standard library, so this package exports it.
"""

from .clock import ManualClock

__all__ = ["ManualClock"]
