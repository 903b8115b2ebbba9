"""Test doubles shipped for users' own test suites (an authorization server, KMS fakes).

Each lives in its own module and imports its optional dependencies only when imported,
for example ``from keyless_m2m.testing.azure_key_vault import FakeKeyVault``.
"""
