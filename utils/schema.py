"""Small JSON-schema checks shared by every config section; each error names the key."""

import copy
import json

from utils.errors import ConfigError

_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
          list: "a list", type(None): "null"}


def _types(spec):
    return tuple(type(None) if t is None else t for t in (spec if isinstance(spec, tuple) else (spec,)))


def check_value(value, spec, key):
    """Raise ConfigError unless ``value`` has one of the types in ``spec``.

    ``spec`` is a type or a tuple of types, where ``None`` admits JSON null. A JSON ``true`` is not
    accepted as a number (``bool`` is an ``int`` subclass in Python).
    """
    allowed = _types(spec)
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        words = " or ".join(dict.fromkeys(_WORDS[t] for t in allowed))
        raise ConfigError(f"{key} must be {words}, got {json.dumps(value)}")


def check_unknown(given, known, where):
    """Raise ConfigError naming the first key of ``given`` that is not in ``known``."""
    unknown = [k for k in given if k not in known]
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; valid keys: {', '.join(known)}")


def check_choice(value, choices, key):
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} = {value!r}; use one of {', '.join(map(repr, choices))}")


def validate_section(given, schema, where):
    """Check a config section against ``{key: (types, default)}`` and fill in the defaults.

    A default of None with a non-nullable type marks a required key.
    """
    check_value(given, dict, where)
    check_unknown(given, schema, where)
    out = {}
    for key, (spec, default) in schema.items():
        if key in given:
            check_value(given[key], spec, f"{where}.{key}")
            out[key] = given[key]
        elif default is None and type(None) not in _types(spec):
            raise ConfigError(f"{where}.{key} is required")
        else:
            out[key] = copy.deepcopy(default)
    return out
