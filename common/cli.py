"""What the command line hands a bundle, made safe: boolean settings, and the cause of a failure shown last.

``python -m monai.bundle run ... --amp false`` reaches the config through python-fire, which turns ``False``
into a boolean but ``false`` into the string ``"false"``, true in every ``$... if @amp else ...``. The
bundles therefore read each boolean setting through :func:`flag`, in one ``flags`` section per config::

    "amp": "$torch.cuda.is_available()",
    "flags": {"amp": "$common.cli.flag(@amp, 'amp')"},
    ...  "amp": "@flags#amp"  ...

A failure deep inside a bundle reaches the user wrapped several times: MONAI's transforms wrap it in
``RuntimeError: applying transform ...``, the config parser in ``RuntimeError: Failed to evaluate ...``, a
data-loader worker turns it into text. :func:`report_root_cause` makes the root error's own message (which
names the file, what was expected and what was found) the last thing printed, below the usual traceback.
"""

from __future__ import annotations

import re
import sys
from types import TracebackType

FLAG_WORDS = {"true": True, "false": False, "1": True, "0": False}

# torch.utils.data re-raises a worker's exception as text: "Caught <Type> in DataLoader worker process <n>.\n
# Original Traceback (most recent call last): ..."; a chained traceback lists the root cause first.
WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal (Traceback.*)", re.DOTALL)
CHAIN_SEPARATORS = re.compile(
    r"\n\s*(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\s*\n"
)


def flag(value: object, name: str) -> bool:
    """A boolean setting as given on the command line or in a config, as a ``bool``.

    Args:
        value: ``True`` / ``False``, ``1`` / ``0``, or the strings ``"true"`` / ``"false"`` / ``"1"`` / ``"0"`` in
            any case (python-fire passes ``--amp false`` as the string ``"false"``).
        name: the setting's name, for the error message.

    Raises:
        ValueError: ``value`` is anything else (the message names the setting and what it got).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAG_WORDS:
        return FLAG_WORDS[value.strip().lower()]
    raise ValueError(f"--{name} must be true or false (or True / False / 1 / 0), got {value!r}")


def root_cause(error: BaseException) -> BaseException:
    """The first error raised in ``error``'s chain: follows ``__cause__`` and ``__context__`` to its end."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            return error
        error = inner


def root_cause_message(error: BaseException) -> str:
    """The message of the error at the root of ``error``'s chain: ``"<Type>: <message>"``.

    Where that root is a data-loader worker's error re-raised as text, the root error of the worker's own traceback.
    """
    root = root_cause(error)
    worker = WORKER_TRACEBACK.match(str(root))
    if worker:
        return _last_error_of(CHAIN_SEPARATORS.split(worker.group(1))[0])
    return f"{type(root).__name__}: {root}"


def _last_error_of(formatted: str) -> str:
    """The exception lines of one formatted traceback: what follows its last indented (stack) line."""
    lines = formatted.strip().splitlines()
    stack_lines = [index for index, line in enumerate(lines) if line.startswith(" ")]
    return "\n".join(lines[stack_lines[-1] + 1 if stack_lines else 0:]).strip()


def report_root_cause() -> None:
    """Install a ``sys.excepthook`` that prints the traceback as usual, then the root cause of the error.

    The last lines printed are ``error: <Type>: <message>`` of the error at the root of the chain, unless the error
    has no chain (the traceback then ends with it already). Idempotent; ``KeyboardInterrupt`` is printed as usual.
    """
    if getattr(sys.excepthook, "reports_root_cause", False):
        return
    default_hook = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        default_hook(kind, error, trace)
        if isinstance(error, KeyboardInterrupt):
            return
        if root_cause(error) is not error or WORKER_TRACEBACK.match(str(error)):
            print(f"\nerror: {root_cause_message(error)}", file=sys.stderr, flush=True)

    hook.reports_root_cause = True  # type: ignore[attr-defined]
    sys.excepthook = hook
