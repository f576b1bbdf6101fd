"""Per-task configuration files and the one loader that reads them.

    from cxr_core import cfg
    recipe = cfg.load("classify", "my_recipe.yaml", overrides={"lr": 5e-4})

Each task has one commented YAML file here (`classify.yaml`, `segment.yaml`, `detect.yaml`), in
the spirit of ultralytics' `cfg/default.yaml`: the file is the documentation of every knob and
its default. A user's file and CLI overrides go on top. Why one strict loader: a misspelt key
(`lr_stpe: 8`) that is silently ignored trains a different model than the card says, so unknown
keys and values of the wrong type are refused with the key named. The resolved dict is what the
model card records as the configuration that ran. Paths and app thresholds stay in `settings`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

CFG_DIR = Path(__file__).resolve().parent
TASKS = ("classify", "segment", "detect")


class ConfigError(ValueError):
    """A configuration file or override the loader refuses; the message names the key."""


def path(task: str) -> Path:
    """The default configuration file of `task`."""
    if task not in TASKS:
        raise ConfigError(f"Unknown task '{task}'. Known: {', '.join(TASKS)}")
    return CFG_DIR / f"{task}.yaml"


def _read(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(file).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"Cannot read the configuration file {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must be a mapping of keys to values, not {type(data).__name__}.")
    return data


def defaults(task: str) -> dict[str, Any]:
    """The task's defaults exactly as its YAML file states them."""
    return _read(path(task))


def _check_type(task: str, key: str, value: Any, default: Any) -> Any:
    if value is None or default is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(value, bool) and isinstance(default, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(f"{task} config: '{key}' must be {type(default).__name__} (like the default {default!r}), "
                      f"got {value!r}.")


def load(
    task: str,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    extra_keys: Iterable[str] = (),
    typed: bool = True,
) -> dict[str, Any]:
    """Defaults of `task`, then `file`, then `overrides` (None values in overrides are skipped).

    `extra_keys` are further accepted keys (the detector accepts every ultralytics train argument);
    `typed=False` leaves value types to the consumer (ultralytics checks its own, where e.g. `cache`
    is 'ram', 'disk' or false). Raises `ConfigError` for unknown keys (with the closest known key) or a value of the wrong type.
    """
    base = defaults(task)
    known = set(base) | set(extra_keys)
    out = dict(base)
    layers = [(str(file), _read(Path(file)))] if file else []
    layers.append(("override", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for where, layer in layers:
        for key, value in layer.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{task} config ({where}): unknown key '{key}'.{hint} "
                                  f"Known keys are listed in {path(task)}.")
            out[key] = _check_type(task, key, value, base.get(key)) if typed else value
    return out


def from_argv(task: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """The recipe a command line asks for: defaults + its `--config FILE`, before the full parse
    (the CLI's flag defaults come from it). A refused file stops the command with the message."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    try:
        return load(task, pre.parse_known_args(argv)[0].config)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


__all__ = ["CFG_DIR", "TASKS", "ConfigError", "defaults", "from_argv", "load", "path"]
