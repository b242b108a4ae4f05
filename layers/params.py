"""Validated JSON param_str for our Python layers.

An unknown key or a value of the wrong type is an error that names the layer,
the key and what was expected (Caffe prints it and stops at net setup).
"""
import json


class LayerParamError(ValueError):
    pass


def parse_params(layer_name, param_str, schema):
    """schema: {key: (type or tuple of types, default, check or None)}.

    A default of `REQUIRED` makes the key mandatory. `check(value)` returns an
    error string or None.
    """
    text = (param_str or "").strip()
    try:
        given = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise LayerParamError(f"layer '{layer_name}': param_str is not valid JSON ({e}): {text!r}")
    if not isinstance(given, dict):
        raise LayerParamError(f"layer '{layer_name}': param_str must be a JSON object, got {text!r}")
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise LayerParamError(f"layer '{layer_name}': unknown param_str key(s) {unknown}; "
                              f"valid: {sorted(schema)}")
    out = {}
    for k, (types, default, check) in schema.items():
        if k not in given:
            if default is REQUIRED:
                raise LayerParamError(f"layer '{layer_name}': param_str needs '{k}'")
            out[k] = default
            continue
        v = given[k]
        types_t = types if isinstance(types, tuple) else (types,)
        # JSON has no int/float distinction for whole numbers; bool is not a number.
        if float in types_t and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, types_t) or (isinstance(v, bool) and bool not in types_t):
            names = "/".join(t.__name__ for t in types_t)
            raise LayerParamError(f"layer '{layer_name}': param_str '{k}' must be {names}, got {v!r}")
        if check is not None:
            msg = check(v)
            if msg:
                raise LayerParamError(f"layer '{layer_name}': param_str '{k}'={v!r}: {msg}")
        out[k] = v
    return out


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()


def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"
