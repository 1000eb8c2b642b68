"""What every ``repzoo`` sub-command shares: checked argument types, the parser, and the error boundary.

A sub-command gets these by registering on :func:`parser` with the types below; nothing else is needed for
its errors to end in one ``repzoo: error: ...`` line and a non-zero exit, and its warnings in one
``repzoo: warning: ...`` line each:

- bad arguments are refused by argparse (a checked type, an unknown option) before the command runs;
- a :class:`~repzoo.errors.RepZooError` from the command is its message;
- anything else is a bug: one line naming it, and ``REPZOO_DEBUG=1`` to see the traceback.

Every checked type carries ``bad_values``: arguments it must refuse (the CLI tests feed them to every
option that uses it).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, List, Optional

from .errors import RepZooError

__all__ = ["Parser", "positive_int", "non_negative_int", "fraction", "positive_float", "non_negative_float", "device", "existing_file", "existing_folder",
           "check_image_size",
           "run_command", "EXIT_ERROR", "EXIT_BUG"]

EXIT_ERROR = 2  #: a bad argument or a refused input (argparse's code too)
EXIT_BUG = 1  #: an unexpected exception


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one ``repzoo: error: <command>: ...`` line after the usage."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(EXIT_ERROR, f"repzoo: error: {command}{message} (see `{self.prog} --help`)\n")


def _checked(bad_values: tuple) -> Callable:
    def mark(func: Callable) -> Callable:
        func.bad_values = bad_values
        return func
    return mark


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
    return value


@_checked(("0", "-5", "two"))
def positive_int(text: str) -> int:
    """An integer of at least 1 (a batch size, an image size, a count)."""
    return _whole_number(text, 1)


@_checked(("-1", "ten"))
def non_negative_int(text: str) -> int:
    """An integer of at least 0 (``--num-classes 0``: pooled features, no classifier)."""
    return _whole_number(text, 0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


@_checked(("0", "-0.1", "nan", "fast"))
def positive_float(text: str) -> float:
    """A number above 0 (a learning rate)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return value


@_checked(("-1", "inf", "none"))
def non_negative_float(text: str) -> float:
    """A number of at least 0 (a weight decay, a mixup alpha)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


@_checked(("0", "1.5", "-0.2", "half"))
def fraction(text: str) -> float:
    """A number in (0, 1] (a crop fraction)."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1, not {value}")
    return value


@_checked(("gpu0", "cuda:99", "mps:7"))
def device(text: str) -> str:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA GPU that torch can use; use cpu")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA GPU(s), cuda:0 to "
                                             f"cuda:{count - 1}")
    elif dev.type == "mps" and (not torch.backends.mps.is_available() or (dev.index or 0) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no Apple GPU that torch can use; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: repzoo runs on cpu, cuda or mps")
    return text


def _existing(text: str, folder: bool, hint: str) -> str:
    if not (os.path.isdir(text) if folder else os.path.isfile(text)):
        other = os.path.isfile(text) if folder else os.path.isdir(text)
        where = ("is a file, not a folder" if folder else "is a folder, not a file") if other else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {where}: {hint}")
    return text


@_checked(("/no/such/file.pth",))
def existing_file(text: str) -> str:
    """A path to a file that exists."""
    return _existing(text, False, "pass the path of a checkpoint file")


@_checked(("/no/such/folder",))
def existing_folder(text: str) -> str:
    """A path to a folder that exists."""
    return _existing(text, True, "pass the folder of class sub-folders")


def check_image_size(name: str, size: Optional[int]) -> None:
    """Refuse an ``--image-size`` that the model cannot take (RepMLPNet: multiples of its partitions), before
    anything is built, exported or timed. A model built on the ``meta`` device checks a ``meta`` input."""
    if size is None:
        return
    import torch

    from .registry import get_model_entry

    with torch.device("meta"):
        model = get_model_entry(name).builder()
        check = getattr(model, "check_input_size", None)
        if check is not None:
            try:
                check(torch.empty(1, model.in_chans, size, size))
            except RepZooError as err:
                raise RepZooError(f"--image-size {size} does not fit {name}: {err}".replace(
                    "(pretrained_cfg['input_size'])", "(the default when --image-size is not given)")) from None


def _show_warning(seen: set):
    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in seen:
            seen.add(text)
            print(f"repzoo: warning: {text}", file=sys.stderr)
    return show


def run_command(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> int:
    """Parse ``argv`` and run the command it names; the exit code, never a traceback (unless REPZOO_DEBUG)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: --help, --version, or a refused argument (already printed)
        return stop.code if isinstance(stop.code, int) else EXIT_ERROR
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(set())  # once each, without the source line
        try:
            return args.func(args)
        except RepZooError as err:
            print(f"repzoo: error: {err}", file=sys.stderr)
            return EXIT_ERROR
        except BrokenPipeError:  # `repzoo list | head -1`: the reader is gone, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt:
            print("repzoo: error: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # the boundary: a bug is one line, not a traceback
            if os.environ.get("REPZOO_DEBUG"):
                raise
            first = (str(err).strip().splitlines() or [""])[0][:300]
            print(f"repzoo: error: {type(err).__name__}: {first} -- this is a bug in repzoo, please report it "
                  f"(REPZOO_DEBUG=1 shows the traceback)", file=sys.stderr)
            return EXIT_BUG
