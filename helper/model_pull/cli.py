"""Command-line interface: click commands only; the work happens in the modules they call."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from model_pull import __version__, check
from model_pull.compat import Runtime
from model_pull.errors import ExitCode, ModelPullError

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


@cli.command("check")
@click.argument("target", metavar="NAME|PATH|REPO")
@click.option("--revision", help="Hub revision (branch, tag or commit) for a REPO.")
@click.option("--runtime", type=click.Choice([r.value for r in Runtime]),
              help="Runtime to plan for (default: llama-server for GGUF, else vllm).")
@click.option("--gpu", "gpus", multiple=True, metavar="SPEC",
              help="Plan for a GPU instead of reading NVML: 8.9:24GiB or a name (L4, H100 ...). "
                   "Repeat for several.")
@click.option("--package-sm", metavar="LIST",
              help="SMs the runtime build was compiled for (cudaCapabilities), e.g. 8.9,9.0.")
@click.option("--no-forward-compat", is_flag=True,
              help="The build has no PTX (nixpkgs cudaForwardCompat = false).")
@click.option("--context", type=int, help="Context length (default: the model's maximum).")
@click.option("--parallel", type=int, help="Parallel sequences (default: the runtime's).")
@click.option("--kv-cache-dtype", metavar="T", help="KV cache type: fp8, q8_0, q4_0, f16 ...")
@click.option("--strict", is_flag=True, help="Fail (exit 30) unless the verdict is native.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--root", metavar="DIR", help="State root (default $MODEL_PULL_ROOT or "
              "/var/lib/inference).")
def check_cmd(target: str, revision: str | None, runtime: str | None, gpus: tuple[str, ...],
              package_sm: str | None, no_forward_compat: bool, context: int | None,
              parallel: int | None, kv_cache_dtype: str | None, strict: bool, as_json: bool,
              root: str | None) -> None:
    """Will this model run on this GPU, with this runtime build, in this much memory?

    Reads metadata only (config.json, hf_quant_config.json, GGUF headers), never weights.
    Exit: 0 ok, 30 emulated (--strict), 31 unsupported, 32 does not fit, 33 no GPU information.
    """
    rt = Runtime(runtime) if runtime else None
    meta = check.load_target(target, root=check.state_root(root), revision=revision)
    arches = check.parse_package_sms(package_sm) if package_sm else ()
    if not arches and "/" not in target:
        unit = check.unit_facts_from_manifest(target, rt)
        if unit is not None:
            rt = rt or unit.runtime
            arches = unit.arches
    found, problem = check.gather_gpus(gpus)
    report = check.preflight(meta, rt, found, gpu_problem=problem, package_arches=arches,
                             forward_compat=not no_forward_compat, context=context,
                             parallel=parallel, kv_cache_dtype=kv_cache_dtype)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(check.render_text(report))
    code = report.exit_code(strict)
    if code is not ExitCode.OK:
        sys.exit(int(code))


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
