"""Error answers of the API: every one is JSON ``{"detail": str}``, declared in the OpenAPI description."""

import typing as t

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class ErrorAnswer(BaseModel):
    """Every error answer of the API."""

    detail: str = Field(description="what is wrong and what to do")


ERROR_TEXT = {
    400: "invalid input", 401: "missing or invalid bearer token", 403: "the client lacks the scope this route needs",
    404: "no such dump", 409: "conflicts with the dump's state", 410: "the image was deleted or is missing",
    413: "request body too large", 415: "body is not JSON", 416: "range not satisfiable", 422: "invalid parameter",
    503: "authentication is unavailable (the service's token file is unusable)",
}
# What any route that needs a token may answer.
AUTH_ERRORS = (401, 403, 503)


class BadRequest(Exception):
    """Invalid input; the message tells the client what is wrong."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_responses(*codes: int) -> t.Dict[t.Union[int, str], t.Dict[str, t.Any]]:
    """OpenAPI declarations of a route's error answers."""
    return {code: {"model": ErrorAnswer, "description": ERROR_TEXT[code]} for code in codes}


def error(status: int, detail: str, headers: t.Optional[t.Mapping[str, str]] = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
