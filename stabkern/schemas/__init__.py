"""The JSON Schemas (draft 2020-12) of every report stabkern writes, shipped as package data.

One file per `format`: stabkern-attenuation-report-v1, stabkern-measure-report-v1,
stabkern-compression-report-v1, stabkern-choose-k-v1, stabkern-card-v1, stabkern-study-report-v1
(+ distribution.json, the per-sample summary they share). Documented in docs/card.md and docs/study.md. `validate(doc)` checks a report's
`to_dict()` against the schema its "format" names (needs `jsonschema`); `tagged` adds "format" and
"schema_version" to a dict whose class does not write them yet. Not a serializer: reports build their
own dicts.
"""

from __future__ import annotations

import json
from importlib import resources

SCHEMA_VERSION = 1
FORMATS = ("stabkern-attenuation-report-v1", "stabkern-measure-report-v1", "stabkern-compression-report-v1",
           "stabkern-choose-k-v1", "stabkern-card-v1", "stabkern-study-report-v1")


def load(name: str) -> dict:
    """The schema of format `name` (or "distribution") as a dict."""
    if name not in FORMATS and name != "distribution":
        raise ValueError(f"unknown report format {name!r}; known: {', '.join(FORMATS)}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


def tagged(doc: dict, fmt: str) -> dict:
    """`doc` with "format" = fmt and "schema_version" first (a new dict; doc is not changed)."""
    rest = {k: v for k, v in doc.items() if k not in ("format", "schema_version")}
    return {"format": fmt, "schema_version": SCHEMA_VERSION, **rest}


def validate(doc: dict, fmt: str | None = None) -> None:
    """Raise jsonschema.ValidationError unless `doc` matches the schema of `fmt` (default: doc["format"])."""
    import jsonschema
    from referencing import Registry, Resource

    fmt = fmt or doc.get("format")
    if fmt is None:
        raise ValueError("the document has no 'format': pass fmt")
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in map(load, (*FORMATS, "distribution")))
    validator = jsonschema.Draft202012Validator(load(fmt), registry=registry)
    validator.validate(doc)
