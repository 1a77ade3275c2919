"""Contents of the page's <script> elements: script-safe JSON and the plotly.js bundle."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import math
from importlib import resources
from typing import Any

from markupsafe import Markup

PLOTLY_BUNDLE = "plotly-basic.min.js"
PLOTLY_VERSION = "4.1.1"

# Characters that could end a <script> element, open an HTML comment or an entity, or end a
# JavaScript line; JSON allows each of them as a \u escape.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                   "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ESCAPE_TABLE = str.maketrans(_SCRIPT_ESCAPES)


def round_significant(value: float, digits: int = 4) -> float | None:
    """Round to `digits` significant digits; NaN and Inf become None (JSON null)."""
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def plain(value: Any) -> Any:
    """Turn numpy scalars and arrays, tuples and non-finite floats into JSON-ready values."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return round_significant(value)
    return str(value)


def script_json(value: Any) -> Markup:
    """Serialise `value` as JSON that is safe inside a <script type="application/json"> element.

    `<`, `>`, `&`, U+2028 and U+2029 are written as \\u escapes, so no string in the data can end
    the element; JSON.parse reads the escapes back as the original characters.
    """
    text = json.dumps(plain(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Markup(text.translate(_ESCAPE_TABLE))


@functools.lru_cache(maxsize=1)
def plotly_bundle_base64() -> str:
    """Return the vendored plotly.js bundle, gzip-compressed and base64-encoded (cached)."""
    source = resources.files("dpodiag.report").joinpath("assets", PLOTLY_BUNDLE).read_bytes()
    # mtime=0 keeps the compressed bytes, and so the page, identical between renders.
    return base64.b64encode(gzip.compress(source, compresslevel=9, mtime=0)).decode("ascii")
