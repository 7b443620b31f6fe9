"""Small conversions between the wire and models: path tokens and query strings in, JSON out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Response
from werkzeug.routing import BaseConverter

from server.api_models import ErrorDetail
from server.errors import ParameterError

ModelT = TypeVar("ModelT", bound=BaseModel)

# Path segments after `/v1/session/` that name a route, not a token.
RESERVED_TOKENS: Final = ("create",)


class TokenConverter(BaseConverter):
    """The `<token:...>` path segment: any segment except a reserved word.

    Without it `/v1/session/create` would also match `/v1/session/<token>`, so a GET or
    DELETE there would reach the status route (404 for token "create") instead of a 405,
    and OPTIONS would advertise methods the create path does not serve.
    """

    regex = "".join(f"(?!{word}(?:/|$))" for word in RESERVED_TOKENS) + "[^/]+"


def json_response(model: BaseModel, status: int = 200) -> Response:
    """`model` as a JSON response (JSON mode: datetimes as ISO-8601 strings)."""
    return Response(model.model_dump_json(), status=status, content_type="application/json")


def parse_params(
    model: type[ModelT], values: Mapping[str, str | None], *, empty_is_absent: bool = True
) -> ModelT:
    """Read query parameters (or headers) into `model`; `ParameterError` names each bad one.

    Empty values count as absent by default, so `?since=` is the same as no `since`
    (/openapi.json says so with `allowEmptyValue`). Headers have no such convention:
    they pass `empty_is_absent=False`, and an empty value must then fit the model.
    """
    absent = (None, "") if empty_is_absent else (None,)
    data = {key: value for key, value in values.items() if value not in absent}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            ErrorDetail(path=".".join(str(part) for part in error["loc"]), message=error["msg"])
            for error in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{d.path}: {d.message}" for d in details)
        raise ParameterError(f"invalid parameters: {summary}", details) from None
