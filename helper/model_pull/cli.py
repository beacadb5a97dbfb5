"""Command-line interface: click commands only; the work happens in the modules they call."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from model_pull import __version__
from model_pull import status as status_mod
from model_pull.errors import ExitCode, ModelPullError
from model_pull.manifest import Manifest

logger = logging.getLogger("model_pull")


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="model-pull")
@click.option("-v", "--verbose", is_flag=True, help="Log what is being done.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Fetch, verify and package Hugging Face weights into immutable entries.

    With no command, pull every model the NixOS manifest declares.
    """
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("MODEL_PULL_DEBUG") else
        logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    if ctx.invoked_subcommand is None:
        raise ModelPullError(ExitCode.ERROR, "manifest-driven pull is not implemented yet")


@cli.command()
@click.option("--root", type=click.Path(path_type=Path), envvar="MODEL_PULL_ROOT",
              help="State root (default: the manifest's root, /var/lib/inference).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(root: Path | None, as_json: bool) -> None:
    """Show each declared model, its entry, its units and the GPU memory they hold.

    The manifest is /etc/inference/models.json (MODEL_PULL_MANIFEST overrides it). Exits 40
    when systemd cannot be asked (no system bus, or not root), after printing the rest.
    """
    manifest = Manifest.load()
    report = status_mod.collect(manifest, root or manifest.root)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(status_mod.render(report))
    if report.bus_error is not None:
        raise report.bus_error


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except ModelPullError as exc:
        if os.environ.get("MODEL_PULL_DEBUG"):
            logger.exception("debug traceback")
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(exc.code))
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
