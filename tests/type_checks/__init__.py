"""User code of the public API's main lines, checked by ``mypy --strict`` and never run.

Each module here is what a user would write (the README's and the docs' lines); ``nox -s
typecheck`` checks them with ``--strict --warn-unused-ignores``, so a public signature
that stops fitting its documented use fails CI. A line ending in ``# type: ignore[code]``
is a misuse mypy must reject: if it stops rejecting it, the ignore is unused and the check
fails. Not tests for pytest (no ``test_*.py``): nothing here is collected or executed.
"""
