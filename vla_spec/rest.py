"""The reference REST protocol of OpenVLA's ``vla-scripts/deploy.py``: one ``POST /act`` per action.

Facts (openvla/openvla ``vla-scripts/deploy.py``; the code here is this project's own):

* Body: a JSON object encoded with json-numpy: ``{"image": uint8 H x W x 3, "instruction": str,
  "unnorm_key": str (optional)}``; a numpy array is the object
  ``{"__numpy__": base64 of the C-order bytes, "dtype": "|u1", "shape": [H, W, 3]}``.
* The "double-encoded" variant, for clients without json-numpy: ``{"encoded": STRING}`` where STRING
  is the json-numpy text of the payload above; ``encoded`` must then be the only key, and the answer
  is double-encoded too (a JSON string holding the json-numpy text of the action).
* Answer: the action, a float array of 7 in dataset units (gripper in the training convention,
  1 = open), exactly what ``predict_action`` returns for the given ``unnorm_key``.
* The reference answers a failed request with the string ``"error"`` and status 200; this project's
  server answers 4xx (bad request) or 500 (model error) with ``{"detail": one-line reason}``.

json-numpy is imported inside the functions: the ``serve`` extra provides it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

ACT_PATH = "/act"
DEFAULT_PORT = 8000


SERVE_EXTRA = ("fastapi", "uvicorn", "json_numpy", "httpx")


def require_serve_extra() -> None:
    """Raise ``ImportError`` naming the fix when a package of the ``serve`` extra is missing."""
    import importlib.util

    missing = [name for name in SERVE_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"the server and client need the serve extra ({', '.join(missing)} missing): pip install -e '.[serve]'")


class BadRequest(ValueError):
    """A request that does not follow the protocol; the message is the one-line reason."""


@dataclass(frozen=True, eq=False)
class ActRequest:
    """One decoded request: the image (H x W x 3 uint8, writable copy), the instruction, the key
    (None when absent) and whether the client used the double-encoded variant."""

    image: np.ndarray
    instruction: str
    unnorm_key: str | None = None
    double_encoded: bool = False


def encode_request(image: np.ndarray, instruction: str, unnorm_key: str | None = None, *, double_encode: bool = False) -> str:
    """The request body (JSON text) for ``image``, ``instruction`` and ``unnorm_key`` (omitted when None)."""
    import json_numpy

    payload: dict[str, Any] = {"image": np.ascontiguousarray(image), "instruction": instruction}
    if unnorm_key is not None:
        payload["unnorm_key"] = unnorm_key
    text = json_numpy.dumps(payload)
    return json.dumps({"encoded": text}) if double_encode else text


def _json(text: bytes | str) -> Any:
    import json_numpy

    try:
        return json_numpy.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"body is not JSON ({error}); send a json-numpy object with image and instruction") from None
    except (KeyError, TypeError) as error:
        raise BadRequest(f"a json-numpy array is malformed ({error!r})") from None


def decode_request(body: bytes) -> ActRequest:
    """Parse and check a request body; raise :class:`BadRequest` naming what is wrong and the fix."""
    payload = _json(body)
    if isinstance(payload, dict) and "encoded" in payload:
        if len(payload) != 1 or not isinstance(payload["encoded"], str):
            raise BadRequest('a double-encoded body is {"encoded": STRING} with no other key')
        return replace(_check_payload(_json(payload["encoded"])), double_encoded=True)
    return _check_payload(payload)


def _check_payload(payload: Any) -> ActRequest:
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"image", "instruction", "unnorm_key"})
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; the fields are image, instruction and unnorm_key")
    image = payload.get("image")
    if not isinstance(image, np.ndarray):
        raise BadRequest("image is missing or not a json-numpy array; send a uint8 H x W x 3 array")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise BadRequest(f"image must be uint8 H x W x 3 (RGB), got dtype {image.dtype} and shape {image.shape}")
    instruction = payload.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRequest("instruction is missing or not a non-empty string")
    key = payload.get("unnorm_key")
    if key is not None and not isinstance(key, str):
        raise BadRequest(f"unnorm_key must be a string, got {type(key).__name__}")
    return ActRequest(image.copy(), instruction, key)


def encode_action(action: np.ndarray, *, double_encode: bool = False) -> str:
    """The answer body (JSON text) for one action, in the variant the request used."""
    import json_numpy

    text = json_numpy.dumps(np.asarray(action, dtype=np.float64))
    return json.dumps(text) if double_encode else text


def decode_action(text: str, *, double_encoded: bool = False) -> np.ndarray:
    """The action array of an answer body (either variant)."""
    import json_numpy

    value = json_numpy.loads(text)
    if double_encoded:
        value = json_numpy.loads(value)
    if not isinstance(value, np.ndarray):
        raise BadRequest(f"the answer is not a json-numpy array: {text[:120]!r}")
    return value
