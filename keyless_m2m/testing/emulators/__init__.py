"""Emulators of other vendors' key services, for tests of code that uses their SDKs.

No vendor ships a local emulator of these, so each is a protocol-level fake that the
vendor's *real* SDK talks to over loopback:

- :mod:`~keyless_m2m.testing.emulators.azure_key_vault`: ``FakeKeyVault``, the Key Vault
  keys REST API over HTTPS (``azure`` extra);
- :mod:`~keyless_m2m.testing.emulators.gcp_kms`: ``FakeCloudKms``, Cloud KMS over gRPC
  (``gcp`` extra).

They share one base (:mod:`._base`): ``start()`` returns the emulator, ``stop()``, ``with``,
``.address`` / ``.url``, and the test kit's one fault API, ``fail_next(*faults)`` with each
emulator's fault objects and ``clear_faults()``. Each module imports its SDK only when
imported itself.
"""
