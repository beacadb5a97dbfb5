"""Command-line interface: click commands only; the work happens in the modules they call.

Data goes to stdout (one JSON object with --json), hints and warnings to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from model_pull import __version__, check, redact
from model_pull import status as status_mod
from model_pull.datamodel import (
    DEBUG_ENV,
    Layout,
    Runtime,
    files_total,
    model_name_problem,
    nar_hash_problem,
    repo_problem,
    resolve_root,
    root_problem,
    validate_triton_name,
)
from model_pull.errors import ExitCode, ModelPullError
from model_pull.manifest import Manifest, state_root
from model_pull.metadata import load_target
from model_pull.output import GcJson, HashJson, ListedJson, ListJson, RollbackJson, VerifyJson
from model_pull.render import check_text, human_size, status_text
from model_pull.store import Entry, StateRoot

if TYPE_CHECKING:
    from model_pull import sync as sync_mod
    from model_pull.pull import Installed, Options

logger = logging.getLogger("model_pull")


ROOT_HELP = (
    "State root (default: $MODEL_PULL_ROOT, else the root in the NixOS manifest, "
    "else /var/lib/inference)."
)


def _check_root(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """--root: a non-empty absolute path that, when it exists, is a directory."""
    if value is None:
        return None
    if (why := root_problem(value)) is not None:
        raise click.BadParameter(f"{value!r} cannot be the state root: {why}")
    if os.path.lexists(value) and not os.path.isdir(value):
        raise click.BadParameter(f"{value!r} is not a directory")
    return Path(value)


def _root_option(f: Any) -> Any:
    return click.option("--root", default=None, callback=_check_root, help=ROOT_HELP)(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(f)


def _root(option: Path | None) -> Path:
    """The command's --root, else the one given before the command (`model-pull --root X
    list`), else $MODEL_PULL_ROOT, the manifest's root, /var/lib/inference."""
    ctx = click.get_current_context(silent=True)
    before = ctx.find_root().params.get("root") if ctx is not None else None
    return state_root(option or before)


def _state(root: Path | None) -> StateRoot:
    """The state root, checked (safefs.py): nothing in it that model-pull would not make."""
    return StateRoot(_root(root)).check()


def _existing_state(root: Path | None) -> StateRoot:
    """The state root for a command that only reads or removes: one that does not exist is a
    mistyped --root (or nothing was pulled), said as such, and is not made."""
    state = _state(root)
    if not state.path.exists():
        raise ModelPullError(
            ExitCode.NOT_INSTALLED,
            f"no state root at {state.path}: nothing was ever installed there",
            hint="check --root and MODEL_PULL_ROOT",
        )
    return state


def _emit(data: Mapping[str, Any]) -> None:
    """One JSON object on stdout (its type: output.py)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _pull_options(f: Any) -> Any:
    opts = [
        click.option("--include", multiple=True, help="Glob of files to take (repeatable)."),
        click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable)."),
        click.option(
            "--layout",
            type=click.Choice([lay.value for lay in Layout]),
            default=Layout.DUAL.value,
            show_default=True,
        ),
        click.option("--name", default=None, help="Model name (default: the repo's name)."),
        click.option("--triton-name", default=None, help="Triton model directory name."),
        click.option(
            "--vllm-arg",
            "vllm_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="vLLM engine argument for model-defaults.json (repeatable).",
        ),
        click.option(
            "--patch-tokenizer",
            is_flag=True,
            help="TokenizersBackend -> PreTrainedTokenizerFast (SGLang 0.5.x).",
        ),
        click.option(
            "--nar-hash",
            "expect_nar",
            default=None,
            help="Refuse anything whose content hash is not this (SRI).",
        ),
        click.option("--no-wait", is_flag=True, help="Fail instead of waiting for another pull."),
        click.option(
            "--connections",
            type=click.IntRange(1, 128),
            default=None,
            envvar="MODEL_PULL_CONNECTIONS",
            help="Most connections a download uses (HTTP range requests; default 20; it opens "
            "more only while they bring more bytes per second).",
        ),
        click.option(
            "--store",
            "store_mode",
            type=click.Choice(["state", "nix"]),
            default="state",
            show_default=True,
            help="'nix' also imports the entry into the Nix store with a GC root.",
        ),
        click.option(
            "--nix-store",
            "nix_store_uri",
            default=None,
            envvar="MODEL_PULL_NIX_STORE",
            help="Another Nix store (e.g. a chroot store directory) for --store nix.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _options(
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    layout: str,
    name: str | None,
    triton_name: str | None,
    vllm_args: tuple[str, ...],
    patch_tokenizer: bool,
    expect_nar: str | None,
) -> Options:
    from model_pull.layouts import parse_engine_args
    from model_pull.pull import Options

    if name is not None and (why := model_name_problem(name)) is not None:
        raise ModelPullError(
            ExitCode.USAGE, f"--name {redact.name(name)} cannot be a model name: {why}"
        )
    if expect_nar is not None and (why := nar_hash_problem(expect_nar)) is not None:
        raise ModelPullError(ExitCode.USAGE, f"--nar-hash {redact.name(expect_nar)}: {why}")
    if triton_name is not None and (why := validate_triton_name(triton_name)) is not None:
        raise ModelPullError(
            ExitCode.USAGE, f"--triton-name {redact.name(triton_name)} is not valid: {why}"
        )
    return Options(
        layout=Layout(layout),
        name=name,
        include=include,
        exclude=exclude,
        triton_name=triton_name,
        engine_defaults=parse_engine_args(vllm_args),
        patch_tokenizer=patch_tokenizer,
        expect_nar=expect_nar,
    )


def _report(installed: Installed, as_json: bool, store_path: str | None) -> None:
    data = installed.to_json()
    if store_path:
        data["nixStorePath"] = store_path
    if as_json:
        _emit(data)
        return
    size = files_total(installed.files)
    state = "installed" if installed.changed else "up to date"
    click.echo(f"{installed.name}: {state}")
    click.echo(f"  entry     {installed.entry.path}")
    click.echo(f"  narHash   {installed.nar_hash}")
    click.echo(
        f"  revision  {installed.revision}  ({installed.repo}, layout {installed.layout}, "
        f"{len(installed.files)} files, {human_size(size)})"
    )
    if store_path:
        click.echo(f"  nix store {store_path}")


def _check_repo(repo: str) -> None:
    if (why := repo_problem(repo)) is not None:
        raise ModelPullError(
            ExitCode.USAGE, f"{redact.name(repo)} is not a repository id: {why}", hint="org/name"
        )


def _nix_import(installed: Installed, root: StateRoot, mode: str, uri: str | None) -> str | None:
    if mode != "nix":
        return None
    from model_pull.nix import add_entry

    return add_entry(installed.entry, store_uri=uri, gc_root=root.path / "gcroots" / installed.name)


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="model-pull")
@click.option("-v", "--verbose", is_flag=True, help="Log what is being done.")
@click.option(
    "--no-restart",
    is_flag=True,
    help="With no command: do not restart the units waiting for new entries.",
)
@click.option(
    "--no-wait", is_flag=True, help="With no command: fail instead of waiting for another pull."
)
@click.option(
    "--store",
    "store_mode",
    type=click.Choice(["state", "nix"]),
    default="state",
    show_default=True,
    help="With no command: 'nix' also imports each entry into the Nix store with a GC root.",
)
@click.option(
    "--nix-store",
    "nix_store_uri",
    default=None,
    envvar="MODEL_PULL_NIX_STORE",
    help="With no command and --store nix: another Nix store (e.g. a chroot store directory).",
)
@_root_option
@click.pass_context
def cli(
    ctx: click.Context,
    verbose: bool,
    no_restart: bool,
    no_wait: bool,
    store_mode: str,
    nix_store_uri: str | None,
    root: Path | None,
) -> None:
    """Fetch, verify and package Hugging Face weights into immutable entries.

    With no command (as root): pull every model the NixOS manifest declares
    (/etc/inference/models.json, or $MODEL_PULL_MANIFEST), verify pins, and restart the
    units that were waiting for them.
    """
    for level in (logging.DEBUG, logging.INFO, logging.WARNING):  # "warning: ...", as ours
        logging.addLevelName(level, logging.getLevelName(level).lower())
    logging.basicConfig(
        level=logging.DEBUG
        if os.environ.get(DEBUG_ENV)
        else logging.INFO
        if verbose
        else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # whatever is logged: one line, no secret
        handler.setFormatter(_CleanFormatter("%(levelname)s: %(message)s"))
    if ctx.invoked_subcommand is None:
        from model_pull.sync import NixStore

        _sync(
            restart=not no_restart,
            wait=not no_wait,
            root=root,
            nix_store=NixStore(nix_store_uri) if store_mode == "nix" else None,
        )


def _sync(
    *, restart: bool, wait: bool, root: Path | None, nix_store: sync_mod.NixStore | None
) -> None:
    from model_pull import sync
    from model_pull.progress import Progress
    from model_pull.units import raise_for_failed

    def say(line: str) -> None:
        click.echo(line, err=line.startswith("warning: "))

    def model_failed(name: str, exc: ModelPullError) -> None:
        _error_line(f"{name}: {exc}")

    manifest = Manifest.load()
    result = sync.sync(
        manifest,
        root=root,
        restart=restart,
        progress=Progress(True),
        wait=wait,
        say=say,
        on_error=model_failed,
        nix_store=nix_store,
    )
    for outcome in result.restarted:
        click.echo(f"  {outcome.unit}: {outcome.describe()}")
        for line in outcome.journal:
            click.echo(f"    {line}")
    if result.failed:  # each was reported once, above; the first one decides the exit code
        if result.restart_error is not None:
            _error_line(str(result.restart_error))
        raise SystemExit(int(next(iter(result.failed.values())).code))
    if result.restart_error is not None:
        raise result.restart_error
    raise_for_failed(result.restarted)


@cli.command()
@click.argument("repo")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding the HF token (else $HF_TOKEN).",
)
@click.option(
    "--runtime",
    type=click.Choice([r.value for r in Runtime]),
    default=None,
    help="Runtime the check plans for (default: llama-server for gguf, else vllm).",
)
@click.option(
    "--gpu",
    "gpus",
    multiple=True,
    metavar="SPEC",
    help="Check against this GPU instead of NVML (repeatable).",
)
@click.option("--force", is_flag=True, help="Pull even if the check says it cannot run.")
@click.option(
    "--cache",
    "cache_urls",
    multiple=True,
    metavar="URL",
    help="Nix binary cache to substitute a pinned (--nar-hash) entry from before the Hub "
    "(repeatable, asked in order).",
)
@click.option(
    "--trusted-public-key",
    "trusted_keys",
    multiple=True,
    metavar="KEY",
    help="Accept paths signed with this key (name:base64) from a cache without CA lines.",
)
@_pull_options
@_root_option
@_json_option
def fetch(
    repo: str,
    revision: str,
    token_file: Path | None,
    root: Path | None,
    as_json: bool,
    no_wait: bool,
    store_mode: str,
    nix_store_uri: str | None,
    runtime: str | None,
    gpus: tuple[str, ...],
    force: bool,
    connections: int | None,
    cache_urls: tuple[str, ...],
    trusted_keys: tuple[str, ...],
    **opts: Any,
) -> None:
    """Download REPO at a pinned revision, verify, package and install it.

    First checks, from metadata only, that the model can run on this GPU (or --gpu). With
    --nar-hash and --cache, the entry comes from the first cache that has it, verified by Nix.
    """
    from model_pull import hub, pull, substitute
    from model_pull.manifest import Caches
    from model_pull.progress import Progress

    _check_repo(repo)
    options = _options(**opts)
    check.gather_gpus(gpus)  # a bad --gpu is refused before any request
    state = _state(root)
    remote = hub.Remote(token=hub.read_token(token_file))
    if cache_urls and options.expect_nar is None:
        click.echo(
            "warning: --cache is not asked without --nar-hash: nothing ties a repo and revision "
            "to a cache path (model-pull prefetch prints the pin)",
            err=True,
        )
    rt = (
        Runtime(runtime)
        if runtime
        else (Runtime.LLAMA_SERVER if options.layout is Layout.GGUF else None)
    )

    gate = check.Gate(
        repo,
        warn=lambda m: click.echo(f"warning: {m}", err=True),
        remote=remote,
        runtime=rt,
        gpu_specs=gpus,
        force=force,
    )
    installed = pull.fetch(
        repo,
        revision,
        options,
        state,
        remote,
        progress=Progress(not as_json),
        wait=not no_wait,
        preflight=gate.listing,
        connections=connections,
        substitute=substitute.substituter(
            state,
            repo,
            revision,
            options,
            Caches(cache_urls, trusted_keys),
            wait=not no_wait,
            say=lambda line: click.echo(line, err=True),
            gate=gate.tree,
        ),
    )
    _report(installed, as_json, _nix_import(installed, state, store_mode, nix_store_uri))


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--repo", default=None, help="Repo id (default: from an HF cache tree's name).")
@click.option("--revision", default=None, help="The 40-hex commit the files are from.")
@_pull_options
@_root_option
@_json_option
def package(
    src: Path,
    repo: str | None,
    revision: str | None,
    root: Path | None,
    as_json: bool,
    no_wait: bool,
    store_mode: str,
    nix_store_uri: str | None,
    connections: int | None,
    **opts: Any,
) -> None:
    """Package weights already on disk (a directory or an HF cache models--org--name tree)."""
    from model_pull import pull
    from model_pull.progress import Progress

    if repo is not None:
        _check_repo(repo)
    options = _options(**opts)
    state = _state(root)
    installed = pull.package(
        src,
        options,
        state,
        repo=repo,
        revision=revision,
        progress=Progress(not as_json),
        wait=not no_wait,
    )
    _report(installed, as_json, _nix_import(installed, state, store_mode, nix_store_uri))


@cli.command()
@click.argument("repo")
@click.option("--revision", default="main", show_default=True)
@click.option("--token-file", type=click.Path(path_type=Path), default=None)
@_pull_options
@_root_option
@_json_option
def prefetch(
    repo: str,
    revision: str,
    token_file: Path | None,
    root: Path | None,
    as_json: bool,
    no_wait: bool,
    store_mode: str,
    nix_store_uri: str | None,
    connections: int | None,
    **opts: Any,
) -> None:
    """Fetch, then print the declaration that pins it (like nix-prefetch-url).

    The output is a Nix attribute set with every option that changes the entry's bytes and
    its narHash: paste it as services.inference.models.<name>, under any name.
    """
    from model_pull import hub, nixexpr, pull
    from model_pull.progress import Progress

    _check_repo(repo)
    options = _options(**opts)
    state = _state(root)
    installed = pull.fetch(
        repo,
        revision,
        options,
        state,
        hub.Remote(token=hub.read_token(token_file)),
        progress=Progress(not as_json),
        wait=not no_wait,
        connections=connections,
    )
    _nix_import(installed, state, store_mode, nix_store_uri)
    declaration = installed.entry.manifest().spec.declaration(installed.nar_hash)
    if as_json:
        _emit(declaration)
    else:
        click.echo(nixexpr.expr(declaration))


@cli.command()
@click.argument("target", metavar="NAME|PATH")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="URL",
    help="Binary cache: file:///DIR, or any store URL `nix copy --to` accepts.",
)
@click.option(
    "--name",
    default=None,
    help="Publish under this model name (default: the entry's own): the name the fleet declares.",
)
@click.option(
    "--secret-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Sign with this key (nix-store --generate-binary-cache-key).",
)
@_root_option
@_json_option
def push(
    target: str,
    to: str,
    name: str | None,
    secret_key: Path | None,
    root: Path | None,
    as_json: bool,
) -> None:
    """Publish an entry into a Nix binary cache, for the machines that substitute it.

    NAME is an installed model (its current entry), PATH an entry directory. The cache path is
    /nix/store/<hash>-<name>: a machine that declares the model under the same name, with its
    narHash, computes it and substitutes the entry before asking the Hub. Uncompressed unless the
    URL says otherwise (compression=zstd); file:// caches are written here, streaming.
    """
    from model_pull import push as push_mod

    pushed = push_mod.push(push_mod.source(_state(root), target, name), to, secret_key)
    if as_json:
        _emit(pushed.to_json())
        return
    state = "pushed" if pushed.written else "already there"
    signed = ", signed" if pushed.signed else ""
    click.echo(f"{pushed.narinfo.store_path}: {state} ({to}{signed})")
    click.echo(f"  narHash   {pushed.narinfo.nar_hash}")
    click.echo(f"  size      {human_size(pushed.narinfo.nar_size)}")


@cli.command("hash")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default=None, help="Store name (default: the path's basename).")
@_json_option
def hash_cmd(path: Path, name: str | None, as_json: bool) -> None:
    """The NAR hash of PATH (= `nix hash path`) and the store path `nix-store --add` gives it."""
    from model_pull.hashing import (
        NIX_STORE_DIR,
        UnsupportedFileError,
        nar_hash,
        store_basename,
        valid_store_name,
    )

    if name is not None and not valid_store_name(name):
        raise ModelPullError(
            ExitCode.USAGE,
            f"--name {redact.name(name)} is not a Nix store name",
            hint="1-211 characters of A-Z a-z 0-9 + - . _ ? =, not starting with '.'",
        )
    try:
        nar = nar_hash(path)
    except UnsupportedFileError as exc:
        raise ModelPullError(
            ExitCode.BAD_INPUT,
            redact.clean(str(exc), 300),
            hint="a NAR holds regular files, directories and symlinks only",
        ) from exc
    store_name = path.resolve().name if name is None else name
    try:
        store_path = f"{NIX_STORE_DIR}/{store_basename(nar.digest, store_name)}"
    except ValueError as exc:
        raise ModelPullError(ExitCode.BAD_INPUT, str(exc), hint="pass --name") from exc
    if as_json:
        out: HashJson = {
            "path": str(path),
            "narHash": nar.sri,
            "narSize": nar.size,
            "storePath": store_path,
        }
        _emit(out)
    else:
        click.echo(nar.sri)
        click.echo(store_path)


@cli.command()
@click.argument("names", nargs=-1)
@_root_option
@_json_option
def verify(names: tuple[str, ...], root: Path | None, as_json: bool) -> None:
    """Re-hash installed entries: every byte must still match its content address."""
    from model_pull.verify import verify_entries

    state = _existing_state(root)
    results = verify_entries(state, list(names))
    if not results:
        click.echo(f"no models in {state.path}: nothing to verify", err=True)
    if as_json:
        verified: VerifyJson = {"entries": [r.to_json() for r in results]}
        _emit(verified)
    else:
        for r in results:
            click.echo(f"{r.name}: {'ok' if r.ok else 'CORRUPT'}  {r.entry}")
            for problem in r.problems:
                click.echo(f"  {problem}")
    bad = [r for r in results if not r.ok]
    if bad:
        raise ModelPullError(
            ExitCode.VERIFY_FAILED,
            f"{len(bad)} entr{'y' if len(bad) == 1 else 'ies'} corrupted: "
            + ", ".join(r.name for r in bad),
            hint="pull again (the store entry is replaced) and run gc",
        )


@cli.command("list")
@_root_option
@_json_option
def list_cmd(root: Path | None, as_json: bool) -> None:
    """Installed models and their current entries."""
    state = _existing_state(root)
    rows: list[ListedJson] = []
    for name in state.names():
        entry = state.current(name)
        try:
            manifest = entry.manifest() if entry else None
        except (OSError, ValueError):
            manifest = None
        rows.append(
            {
                "name": name,
                "path": str(entry.path) if entry else None,
                "repo": manifest.spec.repo if manifest else None,
                "revision": manifest.spec.revision if manifest else None,
                "layout": str(manifest.spec.layout) if manifest else None,
                "narHash": state.nar_hash_of(entry) if entry else None,
                "size": files_total(manifest.files) if manifest else 0,
                "previous": state.history(name)[-1:] or None,
            }
        )
    if as_json:
        listed: ListJson = {"models": rows}
        _emit(listed)
        return
    for row in rows:
        click.echo(
            f"{row['name']}\t{row['repo']}@{(row['revision'] or '?')[:12]}\t"
            f"{row['layout']}\t{human_size(row['size'])}\t{row['path']}"
        )


@cli.command()
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="First forget all but the last N previous entries of each model "
    "(default: keep the whole history).",
)
@click.option(
    "--downloads",
    is_flag=True,
    help="Also remove downloads no entry holds yet (partial or complete): a pull that was "
    "interrupted then starts over.",
)
@_root_option
@_json_option
def gc(keep: int | None, downloads: bool, root: Path | None, as_json: bool) -> None:
    """Remove the entries nothing reaches.

    Kept: what models/ links, pins (by-hash/) and each model's history point at. An entry a
    pin reaches stays until that by-hash/ link is removed. Downloads an interrupted pull left
    stay too (the next pull resumes them), unless --downloads.
    """
    state = _existing_state(root)
    with state.lock(wait=True):
        removed = state.gc(keep, downloads=downloads)
    if as_json:
        collected: GcJson = {"removed": [str(p) for p in removed]}
        _emit(collected)
    else:
        for p in removed:
            click.echo(f"removed {p}")


@cli.command()
@click.argument("name")
@_root_option
@_json_option
def rollback(name: str, root: Path | None, as_json: bool) -> None:
    """Point models/NAME back at its previous entry.

    A model the NixOS manifest pins (narHash) is served from its pin, not from models/NAME:
    rolling it back means changing the pin, which this says how to do.
    """
    state = _existing_state(root)
    refuse_if_pinned(state, name)
    with state.lock(wait=True):
        before, after = state.rollback(name)
    if as_json:
        back: RollbackJson = {"name": name, "from": str(before.path), "to": str(after.path)}
        _emit(back)
    else:
        click.echo(f"{name}: {before.basename} -> {after.basename}")


def refuse_if_pinned(state: StateRoot, name: str) -> None:
    """PINNED when the manifest declares a narHash for `name`, naming the pin to set instead."""
    manifest = Manifest.load_optional()
    declared = manifest.models.get(name) if manifest else None
    if declared is None or declared.nar_hash is None:
        return
    previous = [b for b in state.history(name) if (state.store / b).is_dir()]
    nar = state.nar_hash_of(Entry(state.store / previous[-1])) if previous else None
    how = (
        f'set services.inference.models.{name}.narHash = "{nar}" (its previous entry)'
        if nar
        else f"set services.inference.models.{name}.narHash to the entry you want "
        "(model-pull list --json shows each entry's narHash)"
    )
    raise ModelPullError(
        ExitCode.PINNED,
        f"{name} is pinned to narHash {declared.nar_hash}: its units serve that entry "
        f"(by-hash/), whatever models/{name} points at",
        hint=f"{how}, then nixos-rebuild switch",
    )


@cli.command()
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=Path("demo-root"),
    show_default=True,
    help="Where the demo's Hub and state root go.",
)
def demo(root: Path) -> None:
    """Run the whole job on a generated tiny model, offline (loopback Hub)."""
    from model_pull import demo as demo_mod

    result = demo_mod.run(root.resolve(), lambda line: click.echo(line, err=True))
    _report(result.installed, False, None)
    click.echo(f"  offline   vLLM's snapshot_download(local_files_only=True) -> {result.resolved}")
    click.echo(
        f"  serve it  HF_HUB_CACHE={result.installed.entry.path}/share/models/hub "
        f"HF_HUB_OFFLINE=1 vllm serve {result.installed.repo}"
    )


@cli.command("check")
@click.argument("target", metavar="NAME|PATH|REPO")
@click.option("--revision", help="Hub revision (branch, tag or commit) for a REPO.")
@click.option(
    "--runtime",
    type=click.Choice([r.value for r in Runtime]),
    help="Runtime to plan for (default: llama-server for GGUF, else vllm).",
)
@click.option(
    "--gpu",
    "gpus",
    multiple=True,
    metavar="SPEC",
    help="Plan for a GPU instead of reading NVML: 8.9:24GiB or a name (L4, H100 ...). "
    "Repeat for several.",
)
@click.option(
    "--package-sm",
    metavar="LIST",
    help="SMs the runtime build was compiled for (cudaCapabilities), e.g. 8.9,9.0.",
)
@click.option(
    "--no-forward-compat",
    is_flag=True,
    help="The build has no PTX (nixpkgs cudaForwardCompat = false).",
)
@click.option("--context", type=int, help="Context length (default: the model's maximum).")
@click.option("--parallel", type=int, help="Parallel sequences (default: the runtime's).")
@click.option("--kv-cache-dtype", metavar="T", help="KV cache type: fp8, q8_0, q4_0, f16 ...")
@click.option("--strict", is_flag=True, help="Fail (exit 30) unless the verdict is native.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_root_option
def check_cmd(
    target: str,
    revision: str | None,
    runtime: str | None,
    gpus: tuple[str, ...],
    package_sm: str | None,
    no_forward_compat: bool,
    context: int | None,
    parallel: int | None,
    kv_cache_dtype: str | None,
    strict: bool,
    as_json: bool,
    root: Path | None,
) -> None:
    """Will this model run on this GPU, with this runtime build, in this much memory?

    Reads metadata only (config.json, hf_quant_config.json, GGUF headers), never weights.
    Exit: 0 ok, 30 emulated (--strict), 31 unsupported, 32 does not fit, 33 no GPU information.
    """
    rt = Runtime(runtime) if runtime else None
    planned = check.gather_gpus(gpus) if gpus else None  # bad --gpu: refused before any request
    arches = check.parse_package_sms(package_sm) if package_sm else ()
    meta = load_target(target, root=_root(root), revision=revision)
    if not arches and "/" not in target:
        unit = check.unit_facts_from_manifest(target, rt)
        if unit is not None:
            rt = rt or unit.runtime
            arches = unit.arches
    found, problem = planned or check.gather_gpus(gpus)
    report = check.preflight(
        meta,
        rt,
        found,
        gpu_problem=problem,
        package_arches=arches,
        forward_compat=not no_forward_compat,
        context=context,
        parallel=parallel,
        kv_cache_dtype=kv_cache_dtype,
    )
    if as_json:
        _emit(report.to_json())
    else:
        click.echo(check_text(report))
    failure = report.failure(strict)
    if failure is not None:
        raise failure


@cli.command()
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(root: Path | None, as_json: bool) -> None:
    """Show each declared model, its entry, its units and the GPU memory they hold.

    The manifest is /etc/inference/models.json (MODEL_PULL_MANIFEST overrides it). Exits 40
    when systemd cannot be asked (no system bus, or not root), after printing the rest.
    """
    manifest = Manifest.load()
    ctx = click.get_current_context()
    option = root or ctx.find_root().params.get("root")
    report = status_mod.collect(manifest, resolve_root(option, lambda: manifest.root))
    if as_json:
        _emit(report.to_json())
    else:
        click.echo(status_text(report))
    if report.bus_error is not None:
        raise report.bus_error


class _CleanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if os.environ.get(DEBUG_ENV):
            return redact.mask(text)
        return redact.clean(text, redact.LINE_MAX)


def _error_line(text: str) -> None:
    """The one line a failure gets: `error: what is wrong (what to do)` on stderr."""
    click.echo(f"error: {redact.clean(text, redact.LINE_MAX)}", err=True)


def _usage_line(exc: click.ClickException) -> str:
    message = exc.format_message().rstrip(".")
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "model-pull"
    return f"{message} (see {path} --help)"


def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line for whatever ended the command."""
    if isinstance(exc, ModelPullError):
        return exc.code, str(exc)
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, click.ClickException):  # usage: unknown option, bad value, no argument
        return exc.exit_code, _usage_line(exc)
    if isinstance(exc, PermissionError):
        return ExitCode.PERMISSION, (
            f"permission denied: {exc.filename or exc} (run it as root: sudo model-pull ...)"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return ExitCode.ERROR, f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return ExitCode.ERROR, (
        f"unexpected {type(exc).__name__}: {exc} (a bug in model-pull: run "
        f"it again with {DEBUG_ENV}=1 for the traceback, and report it)"
    )


def main() -> None:
    """Run the command line. Whatever goes wrong ends as one `error:` line on stderr and its
    exit code (errors.ExitCode); the traceback too only with MODEL_PULL_DEBUG=1."""
    try:
        result = cli.main(standalone_mode=False, prog_name="model-pull")
    except SystemExit:
        raise
    except BaseException as exc:
        code, line = _failure(exc)
        if os.environ.get(DEBUG_ENV):
            traceback.print_exception(exc)
        _error_line(line)
        sys.exit(int(code))
    sys.exit(result if isinstance(result, int) else 0)
