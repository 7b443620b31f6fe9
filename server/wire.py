"""Small conversions between the wire and models: query strings in, JSON out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from quart import Response

from server.api_models import ErrorDetail
from server.errors import ParameterError

ModelT = TypeVar("ModelT", bound=BaseModel)


def json_response(model: BaseModel, status: int = 200) -> Response:
    """`model` as a JSON response (JSON mode: datetimes as ISO-8601 strings)."""
    return Response(model.model_dump_json(), status=status, content_type="application/json")


def parse_params(model: type[ModelT], values: Mapping[str, str | None]) -> ModelT:
    """Read query parameters (or headers) into `model`; `ParameterError` names each bad one.

    Empty values count as absent, so `?since=` is the same as no `since`.
    """
    data = {key: value for key, value in values.items() if value not in (None, "")}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            ErrorDetail(path=".".join(str(part) for part in error["loc"]), message=error["msg"])
            for error in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{d.path}: {d.message}" for d in details)
        raise ParameterError(f"invalid parameters: {summary}", details) from None
