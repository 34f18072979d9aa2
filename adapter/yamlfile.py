"""Reading the YAML files the operator writes (the model catalog, the tenants' keys, the warming
templates): one way to say, in one line, why a file cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A file that cannot be read or parsed; the message names it (as `where`) and says why."""


def read_yaml(path: Path, where: str) -> Any:
    """The parsed file. `where` names it in the message (e.g. `ADAPTER_MODELS_FILE /etc/models.yaml`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlFileError(f"{where}: not valid YAML{at}: {problem}") from None
