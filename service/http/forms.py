"""multipart/form-data onto a request model: the one function that maps a form onto the same pydantic model a
JSON body is validated with, so a form and a JSON body are one request to the operation.

    file parts             a list of their bytes under the field's name: `images` (repeat the field), or
                           the one image of an interpolation end (the image parser reads PNG/JPEG bytes
                           as it reads base64 strings)
    a text part            its text where the model's field takes text (`format=png`); otherwise the JSON it
                           holds (`strict=true`, `steps=12`, `noise={"kind": "masking", ...}`), read by
                           pydantic's own JSON parser; several parts of one name make a list

Then the model validates the whole, as it validates a JSON body: a value that does not fit its field is a
422 naming the field.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.errors import MalformedRequest
from service.http import problems

#: Form fields per request besides the files (the models have a handful; a form of thousands is an attack).
MAX_FIELDS = 64


def _takes_text(annotation: Any) -> bool:
    """True when a field of this type takes a plain string (str, a Literal of strings, a union with one)."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_takes_text(a) for a in typing.get_args(annotation))
    return False


async def parse(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request model from a multipart/form-data request (see the module docstring)."""
    settings = request.app.state.settings
    try:
        form = await request.form(max_files=settings.max_items + 2, max_fields=MAX_FIELDS,
                                  max_part_size=settings.max_body_bytes)
    except HTTPException as exc:
        raise MalformedRequest(f"multipart body could not be parsed: {exc.detail}") from exc
    doc: dict[str, Any] = {}
    try:
        for key in dict.fromkeys(form.keys()):
            parts = form.getlist(key)
            files = [await p.read() for p in parts if isinstance(p, UploadFile)]
            if files:
                if len(files) != len(parts):
                    raise MalformedRequest(f"form field {key!r} mixes files and text")
                doc[key] = files  # images, and the one image of an interpolation end
                continue
            field = model.model_fields.get(key)
            texts = [_text(str(p), None if field is None else field.annotation) for p in parts]
            doc[key] = texts if len(texts) > 1 else texts[0]
    finally:
        await form.close()
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise problems.invalid_body(exc, b"") from None


def _text(value: str, annotation: Any) -> Any:
    """A text field's value: the text for a field that takes text, else the JSON it holds (else the text
    itself, for pydantic to refuse by name)."""
    if annotation is None or _takes_text(annotation) and not value.lstrip().startswith(("[", "{")):
        return value
    try:
        return pydantic_core.from_json(value)
    except ValueError:
        return value
