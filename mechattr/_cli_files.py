"""File options of the command line checked before any model is loaded, so that a file that cannot
be read or written is a one-line input error (exit 2) saying what to do, not an internal error
after minutes of work (issue 19, item 12a)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import InputError

# subcommand -> (options read as text files, options written as files, options written as dirs)
_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "attribute": ((), ("html", "json", "save"), ()),
    "attribute-dataset": (("prompts",), (), ("out",)),
    "validate": (("prompts",), ("html", "json"), ()),
    "report": ((), ("out",), ()),
    "demo": ((), ("out",), ()),
}


def _flag(opt: str, command: str) -> str:
    return opt if command == "attribute-dataset" and opt == "prompts" else "--" + opt


def read_text(path: str, what: str = "prompts file") -> str:
    """The UTF-8 text of ``path``, or an InputError naming the problem and the fix."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"The {what} {path!r} is a directory; give the path of a file.")
    if not p.exists():
        raise InputError(f"No {what} at {path!r}; check the path.")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"Cannot read the {what} {path!r} ({e.strerror or e}); check its permissions.") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"The {what} {path!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) and retry."
        ) from e


def check_writable(path: str, option: str, directory: bool = False) -> None:
    """Raise InputError unless ``path`` can be written: a file (its missing parent directories are
    created by the writers), or a directory when ``directory``."""
    p = Path(path)
    if p.exists():
        if directory and not p.is_dir():
            raise InputError(f"{option} {path!r} is a file, not a directory; give a directory path.")
        if not directory and p.is_dir():
            raise InputError(f"{option} {path!r} is a directory; give a file path to write.")
        if not os.access(p, os.W_OK):
            raise InputError(f"{option} {path!r} cannot be written: it is read-only; choose another path.")
        return
    probe = p.parent if str(p.parent) else Path(".")
    while not probe.exists():  # created with its parents when written
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(
            f"{option} {path!r} cannot be written: {str(probe)!r} is a file, not a directory; choose another path."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            f"{option} {path!r} cannot be written: no write permission in {str(probe)!r}; choose another path."
        )


def check_args(args: argparse.Namespace) -> None:
    """Check every file option of the parsed command before it runs."""
    command = getattr(args, "command", None)
    reads, writes, dirs = _FILES.get(str(command), ((), (), ()))
    for opt in reads:
        path = getattr(args, opt, None)
        if path:
            read_text(path, "prompts file")  # decodes it once: the command reads it again
    for opt in writes:
        path = getattr(args, opt, None)
        if path and path != "-":
            check_writable(path, _flag(opt, command))
    for opt in dirs:
        path = getattr(args, opt, None)
        if path:
            check_writable(path, _flag(opt, command), directory=True)


def about_a_file_option(args: argparse.Namespace, filename: object) -> bool:
    """Whether an OSError's ``filename`` is one of the command's file options or a directory above
    one (the writers create missing parent directories)."""
    if not filename:
        return False
    reads, writes, dirs = _FILES.get(str(getattr(args, "command", None)), ((), (), ()))
    bad = Path(os.path.abspath(str(filename)))
    for opt in reads + writes + dirs:
        path = getattr(args, opt, None)
        if path and path != "-":
            mine = Path(os.path.abspath(path))
            if bad == mine or bad in mine.parents:
                return True
    return False
