"""The error tree's attributes, as an except clause reads them."""

from __future__ import annotations

from keyless_m2m import (
    InvalidClientError,
    KeylessM2MError,
    MissingExtraError,
    SigningError,
    TokenManager,
    TokenRequestError,
    TransportError,
)


async def handled(tokens: TokenManager) -> str:
    try:
        token = await tokens.get_token()
    except InvalidClientError as exc:
        hint: str | None = exc.hint
        return f"{exc.error} {exc.status_code} {hint}"
    except TokenRequestError as exc:
        description: str | None = exc.error_description
        return f"{exc.error} {description} {exc.error_uri}"
    except TransportError as exc:
        reason: str = exc.reason
        return reason
    except SigningError as exc:
        return f"{exc.key} {exc.code}"
    except MissingExtraError as exc:
        return f"pip install keyless-m2m[{exc.extra}] ({exc.module})"
    except KeylessM2MError as exc:
        retryable: bool = exc.retryable
        return str(retryable)
    return token.token_type


def misuse(exc: KeylessM2MError) -> None:
    exc.retryable = "yes"  # type: ignore[assignment]
