"""The `vlit` command. Thin: parse options, call the library, print counts.

Every command module registers its commands on the one Typer app below, explicitly.
Errors that vlit raises on purpose (`VlitError`) print as one line and exit with status 2;
`vlit --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer
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
)
from vlit.cli.common import console
from vlit.errors import VlitError

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
    except VlitError as error:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
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
    _exit_with(code)


def _exit_with(code: object) -> None:
    """Exit with the status typer returns instead of raising (Ctrl-C, ``typer.Exit(n)``)."""
    if code == INTERRUPTED:
        console.print("interrupted (Ctrl-C): the command did not finish", highlight=False)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)
