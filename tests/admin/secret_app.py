"""A saga that leaks secrets everywhere a careless application puts them, for the masking tests.

Its data, its step results and its error hold a password, a ``pwd``, an
``Authorization`` header (as a mapping and as a list of pairs), an API key,
card numbers (as a string, as an integer, inside an error message) and
IBANs. ``SECRETS`` lists every fragment that must never be shown;
``VISIBLE`` lists fields that must still be.
"""

from __future__ import annotations

from typing import Any

from sagakit import NonRetryableError, RetryPolicy, SagaBuilder, StepContext

ONE_TRY = RetryPolicy(max_attempts=1, jitter=0)

DATA: dict[str, Any] = {
    "order_id": "o-77",
    "customer": "Ada Lovelace",
    "password": "hunter2-pw",
    "pwd": "pwd-s3cr3t",
    "api_key": "key-live-9f8e7d",
    "headers": {"Authorization": "Bearer hdr-secret-0a1b2c3d", "Accept": "application/json"},
    "raw_headers": [["authorization", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="], ["accept-language", "en-GB"]],
    "payment": {"number": "4111 1111 1111 1111", "holder": "Ada Lovelace"},
    "payout_account": "DE89 3704 0044 0532 0130 00",
    "note": "gift wrap",
}

ERROR = (
    "gateway said: card 5555-5555-5555-4444 declined; sent Authorization: Bearer tok-abcdef123456 "
    "with password=hunter2-pw, pwd: pwd-s3cr3t, api_key=key-live-9f8e7d; refund to DE89370400440532013000"
)

SECRETS = (
    "hunter2",
    "pwd-s3cr3t",
    "hdr-secret",
    "QWxhZGRpbjpvcGVuIHNlc2FtZQ",
    "key-live",
    "4111 1111",
    "4111111111111111",
    "5555-5555",
    "5555555555554444",
    "tok-abcdef",
    "3704 0044",
    "37040044",
    "GB82WEST",
    "WEST1234",
)
VISIBLE = ("o-77", "Ada Lovelace", "application/json", "en-GB", "gift wrap", "gateway said", "declined", "r-9")


async def charge(ctx: StepContext) -> dict[str, Any]:
    return {"receipt": "r-9", "amount": 42, "charged": 4111111111111111, "refund_to": "GB82WEST12345698765432"}


async def notify(ctx: StepContext) -> None:
    raise NonRetryableError(ERROR)


def build() -> Any:
    b = SagaBuilder("leaky", version=1)
    b.step("charge", charge, pivot=True, retry=ONE_TRY)
    b.step("notify", notify, retry=ONE_TRY)
    return b.build()


leaky = build()
