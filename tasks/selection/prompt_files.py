"""Reading prompt files (test-time queries, SIFT target prompts), one prompt per line.

JSONL (``.jsonl``/``.json``/``.ndjson``): one object per line, the prompt under ``text``,
``prompt``, ``query`` or ``instruction``. Any other suffix: plain text, one prompt per
line. Blank lines are skipped; every error names the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

TEXT_KEYS = ("text", "prompt", "query", "instruction")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def iter_prompt_lines(path: str | Path, what: str) -> Iterator[tuple[int, str, dict | None]]:
    """Yield ``(line number, prompt text, the JSON object or None)`` for each prompt.

    ``what`` names the file's role in messages ("queries file", "targets file"). Raises
    FileNotFoundError for a missing file and ValueError (``path:line: reason``) for a
    line that is not UTF-8, not JSON, not an object, or has no non-empty prompt field;
    also when the file holds no prompt at all.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    jsonl = path.suffix.lower() in _JSONL_SUFFIXES
    n = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from err
            if not line:
                continue
            obj = None
            if jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {err.msg}") from err
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object")
                line = next((obj[k] for k in TEXT_KEYS if k in obj), None)
                if not isinstance(line, str) or not line.strip():
                    raise ValueError(f"{path}:{lineno}: missing or empty field 'text' "
                                     "(or prompt/query/instruction)")
            n += 1
            yield lineno, line, obj
    if not n:
        raise ValueError(f"{what} {path} holds no prompts")
