"""Checks on a local Hugging Face model folder before anything is loaded from it.

Hubs cannot be reached, so a model is always a local folder. A folder whose config asks
for custom code (``auto_map``) would run arbitrary Python from that folder on load; it is
refused unless the caller explicitly allows remote code.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["check_model_folder"]


def check_model_folder(model: str, what: str, default_hint: str,
                       trust_remote_code: bool = False, accepted: str = "a folder") -> Path:
    """Return ``model`` as a folder path, or raise a message that names the problem.

    ``what`` names the role ("encoder", "causal LM"); ``default_hint`` says what omitting
    the option gives; ``accepted`` what else may be passed. Raises FileNotFoundError (no
    config.json), ValueError (config.json is not JSON) or PermissionError (custom code
    without ``trust_remote_code``).
    """
    folder = Path(model).expanduser()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{what} {model!r} is not a local Hugging Face model folder (no config.json); "
            f"hubs cannot be reached: pass {accepted}, or omit the option for {default_hint}"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg_file}: not a valid JSON config ({err})") from err
    if isinstance(cfg, dict) and cfg.get("auto_map") and not trust_remote_code:
        raise PermissionError(
            f"{what} folder {folder} asks for custom code (config.json has 'auto_map'); "
            "refusing to run it. Allow it with --trust-remote-code only for a model you trust"
        )
    return folder
