"""The `vlit` command. Thin: parse options, call the library, print counts.

Every command module registers its commands on the one Typer app below, explicitly.
Errors that vlit raises on purpose (`VlitError`), and what readers of hostile input can raise
(`vlit.cli.edge.INPUT_ERRORS`: OS errors, Unicode errors, recursion, decompression bombs, ...),
print as one line and exit with status 2; anything else prints one line and exits 1.
`vlit --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer
from rich.text import Text
from typer.exceptions import TyperException

from vlit import __version__
from vlit.cli import (
    collect_commands,
    demo_commands,
    evaluate_commands,
    format_commands,
    generate_commands,
    quality_commands,
    report_commands,
    run_commands,
)
from vlit.cli.common import console
from vlit.cli.edge import INPUT_ERRORS, describe_error, one_line

app = typer.Typer(
    name="vlit",
    help="Build, score, filter and analyse vision-language instruction-tuning data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
_state = {"debug": False}
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


@app.callback(invoke_without_command=True)
def _options(
    context: typer.Context,
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    _state["debug"] = debug
    if version:
        print(__version__)
        raise typer.Exit()
    if context.invoked_subcommand is None:
        console.print(context.get_help())


# In the order `vlit --help` lists them: the pipeline first, then validation.
for _module in (
    demo_commands,
    collect_commands,
    generate_commands,
    run_commands,
    quality_commands,
    report_commands,
    format_commands,
    evaluate_commands,
):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `vlit` script."""
    try:
        code = app(args=argv, prog_name="vlit", standalone_mode=False)
    except KeyboardInterrupt:  # outside the command (typer turns one inside into 130)
        code = INTERRUPTED
    except INPUT_ERRORS as error:
        if _state["debug"]:
            raise
        _print_error(describe_error(error))
        sys.exit(2)
    except typer.Exit as done:
        if done.exit_code:
            sys.exit(done.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except TyperException as error:  # usage errors from Typer's bundled click: exit 2
        show = getattr(error, "show", None)
        if show is not None:
            show()
        sys.exit(getattr(error, "exit_code", 2))
    except Exception as error:  # noqa: BLE001 - the last guard: one line, never a traceback
        if _state["debug"]:
            raise
        _print_error(
            f"unexpected {type(error).__name__}: {one_line(str(error))}. "
            "Fix: rerun with `vlit --debug ...` and report the traceback"
        )
        sys.exit(1)

    _exit_with(code)


def _print_error(message: str) -> None:
    console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)


def _exit_with(code: object) -> None:
    """Exit with the status typer returns instead of raising (Ctrl-C, ``typer.Exit(n)``)."""
    if code == INTERRUPTED:
        console.print("interrupted (Ctrl-C): the command did not finish", highlight=False)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)
