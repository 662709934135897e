"""Helpers every CLI shares: one-line errors with exit status 2, logging set-up, JSON config files."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError, DVError

F = TypeVar("F", bound=Callable[..., Any])


OWN_LOGGERS = ("core", "pipelines", "flows")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr through rich on a terminal, plain lines otherwise: the project's own
    loggers at INFO, everything else at WARNING (ONNX and ONNX Runtime tooling write hundreds
    of INFO lines per export, which buried a command's result). ``verbose``: all at DEBUG."""
    level = logging.DEBUG if verbose else logging.WARNING
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def domain_app(help: str) -> Any:
    """A domain CLI's Typer app: ``--help`` when called bare, and ``--verbose/-v`` (debug
    logging) before any command; logging is set up before each command runs."""
    import typer

    app = typer.Typer(help=help, no_args_is_help=True, add_completion=False)

    @app.callback()
    def _main(
        verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
    ) -> None:
        setup_logging(verbose)

    return app


def exits_on_error(fn: F) -> F:
    """Wrap a CLI command: a :class:`DVError` prints ``error: <message>`` and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DVError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def read_json_config(path: Path | None) -> dict[str, Any]:
    """A JSON object from ``path`` (``{}`` for None), with errors naming the file."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError("config file not found", where=str(path), fix="check the path") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file is not valid JSON ({exc.msg}, line {exc.lineno})",
            where=str(path),
            fix="fix the JSON syntax",
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            "config file must hold a JSON object", where=str(path), fix="wrap it in {...}"
        )
    return data
