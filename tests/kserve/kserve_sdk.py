"""The KServe SDK's model classes as a strict schema for the YAML in ``deploy/kserve/``.

The SDK's ``ApiClient`` deserializes a dict field by field from each class's
``openapi_types`` and ``attribute_map``, and its constructors refuse a missing required field;
it skips unknown fields silently, and it looks types up in ``kserve.models`` only, so a
Kubernetes type inside a runtime (``V1Container``) fails there. :func:`deserialize` walks the
same tables, finds Kubernetes types in ``kubernetes.client.models`` too, and refuses unknown
fields and wrongly typed values, naming where they are.
"""

from __future__ import annotations

import re
from typing import Any

import kserve.models
import kubernetes.client.models

_NATIVE: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
}


class SchemaError(AssertionError):
    pass


def deserialize(data: Any, type_name: str, where: str = "") -> Any:
    """``data`` as an instance of the SDK class ``type_name`` (or a list/dict/native of it)."""
    if data is None:
        return None
    listed = re.fullmatch(r"(?:list|List)\[(.*)\]", type_name)
    if listed:  # kserve writes list[T], kubernetes List[T]
        if not isinstance(data, list):
            raise SchemaError(f"{where}: expected a list, got {data!r}")
        return [deserialize(v, listed.group(1), f"{where}[{i}]") for i, v in enumerate(data)]
    mapped = re.fullmatch(r"(?:dict\(|Dict\[)[^,]*, (.*)[)\]]", type_name)
    if mapped:  # dict(str, T) and Dict[str, T]
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a mapping, got {data!r}")
        return {k: deserialize(v, mapped.group(1), f"{where}.{k}") for k, v in data.items()}
    if type_name == "object":  # IntOrString, Quantity...: any value
        return data
    if type_name in _NATIVE:
        if not isinstance(data, _NATIVE[type_name]) or (
            type_name != "bool" and isinstance(data, bool)
        ):
            raise SchemaError(f"{where}: expected {type_name}, got {data!r}")
        return data
    klass = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a {type_name} mapping, got {data!r}")
    fields = {key: attr for attr, key in klass.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(f"{where or type_name}: unknown field(s) {unknown} for {type_name}")
    kwargs = {
        fields[key]: deserialize(value, klass.openapi_types[fields[key]], f"{where}.{key}")
        for key, value in data.items()
    }
    try:
        return klass(**kwargs)  # the SDK's own checks: required fields, allowed values
    except ValueError as exc:
        raise SchemaError(f"{where or type_name}: {exc}") from None
