"""The `vlit` command. Thin: parse options, call the library, print counts.

Every command module registers its commands on the one Typer app below, explicitly.
Errors that vlit raises on purpose (`VlitError`) print as one line and exit with status 2;
`vlit --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys

import click
import typer

from vlit import __version__
from vlit.cli import collect_commands, format_commands
from vlit.cli.common import console
from vlit.errors import VlitError

app = typer.Typer(
    name="vlit",
    help="Build, score, filter and analyse vision-language instruction-tuning data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    _state["debug"] = debug
    if version:
        print(__version__)
        raise typer.Exit()


for _module in (collect_commands, format_commands):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `vlit` script."""
    try:
        app(args=argv, standalone_mode=False)
    except VlitError as error:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as error:  # usage errors carry their own exit code (2)
        error.show()
        sys.exit(error.exit_code)
