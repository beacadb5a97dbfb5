"""Interrupt a model-pull command at each of its file operations, for real: SIGKILL, or a full
file system. Run by tests/test_interrupted.py inside its own mount namespace, where `TMPFS` is a
small tmpfs that holds the state root.

A Python audit hook (PEP 578) in the command's process counts the operations that change the
state root: `open` for writing, os.rename, os.symlink, os.link, os.remove, os.rmdir, os.mkdir,
os.chmod, os.truncate, shutil.rmtree, tempfile.mkdtemp. Before operation N it either SIGKILLs
its own process, or fills the tmpfs to the brim (a ballast file for the blocks, empty files for
the inodes), so that the operation and the ones after it meet a real ENOSPC. N runs over every
operation of the command; after each run the state root is checked, then the same command runs
again undisturbed and must finish the job.

    python tests/fault_driver.py SPEC.json   (prints one JSON report on stdout)

SPEC: {"scenario": "pull"|"gc"|"rollback", "tmpfs": DIR, "work": DIR, "repo": ORG/NAME,
       "v1": COMMIT, "v2": COMMIT, "kinds": ["kill", "enospc"]}

Commands run in forked children of this process (it imports model-pull once; each child then
runs `model_pull.cli.main` as the command line would), with one download connection so that
the order of the operations is the same from run to run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from model_pull import cli, net  # imported once, before any fork
from model_pull.store import StateRoot, fingerprint, remove_tree
from model_pull.verify import verify_entry

_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = {
    "os.rename",
    "os.symlink",
    "os.link",
    "os.remove",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.truncate",
    "shutil.rmtree",
    "tempfile.mkdtemp",
}


class Hook:
    """Counts the file operations under `scope`; at `at` kills or fills the disk."""

    def __init__(self, scope: str, at: int, kind: str, ballast: Path, count_file: Path) -> None:
        self.scope, self.at, self.kind = scope, at, kind
        self.ballast, self.count_file = ballast, count_file
        self.n = 0
        self.lock = threading.Lock()
        self.local = threading.local()

    def in_scope(self, event: str, args: tuple[Any, ...]) -> bool:
        if event == "open":
            path, _, flags = args
            if not isinstance(flags, int) or not flags & _WRITE or isinstance(path, int):
                return False
        elif event not in _EVENTS:
            return False
        path = args[0]
        if isinstance(path, int):
            return True  # an fd of ours (rmtree walks by fd)
        name = os.fsdecode(path)
        return name.startswith(self.scope) or not os.path.isabs(name)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if getattr(self.local, "busy", False) or not self.in_scope(event, args):
            return
        with self.lock:
            self.n += 1
            n = self.n
        if n != self.at:
            return
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        self.local.busy = True
        try:
            fill(self.ballast)
        finally:
            self.local.busy = False

    def write_count(self) -> None:
        self.local.busy = True
        self.count_file.write_text(str(self.n))


def fill(ballast: Path) -> None:
    """Fill the file system holding `ballast`: blocks, then inodes."""
    ballast.mkdir(exist_ok=True)
    with contextlib.suppress(OSError), (ballast / "blocks").open("wb") as f:
        chunk = b"\0" * (1 << 20)
        while True:
            f.write(chunk)
            f.flush()
    with contextlib.suppress(OSError), (ballast / "blocks").open("ab") as f:
        while True:  # the last partial megabyte
            f.write(b"\0" * 4096)
            f.flush()
    i = 0
    with contextlib.suppress(OSError):
        while True:
            (ballast / f"i{i}").touch()
            i += 1


def run(argv: list[str], spec: dict[str, Any], at: int = 0, kind: str = "count") -> dict[str, Any]:
    """The command in a forked child; its exit (or signal), its stderr, and its count."""
    work = Path(spec["work"])
    err, count = work / "stderr", work / "count"
    for p in (err, count):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    pid = os.fork()
    if pid == 0:  # the child: the command line, with the hook
        code = 1
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 2)
            out = os.open(os.devnull, os.O_WRONLY)
            os.dup2(out, 1)
            hook = Hook(spec["root"], at, kind, Path(spec["tmpfs"]) / "ballast", count)
            sys.addaudithook(hook)
            sys.argv = ["model-pull", *argv]
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            hook.write_count()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return {
        "rc": rc,
        "stderr": err.read_text(errors="replace") if err.exists() else "",
        "ops": int(count.read_text()) if count.exists() else None,
    }


# --- the state root ---------------------------------------------------------------------------


def restore(spec: dict[str, Any]) -> None:
    """The baseline root, copied back, each entry's record refreshed (a copy has new inodes)."""
    root = Path(spec["root"])
    remove_tree(root)
    ballast = Path(spec["tmpfs"]) / "ballast"
    remove_tree(ballast)
    shutil.copytree(Path(spec["work"]) / "baseline", root, symlinks=True)
    state = StateRoot(root)
    for entry in state.entries():
        record = state.entry_record(entry)
        if record is not None:
            record["fingerprint"] = fingerprint(entry.path)
            (state.entry_records / f"{entry.basename}.json").write_text(json.dumps(record))


def _children(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else []


def problems(spec: dict[str, Any], outcome: dict[str, Any], final: bool) -> list[str]:
    """What is wrong with the root after a run (empty: nothing)."""
    root = Path(spec["root"])
    state = StateRoot(root)
    name, v1, v2 = spec["name"], spec["v1_entry"], spec["v2_entry"]
    found: list[str] = []
    lines = [ln for ln in outcome["stderr"].splitlines() if ln.startswith("error: ")]
    if "Traceback" in outcome["stderr"] or "unexpected" in outcome["stderr"]:
        found.append("a traceback or an unexpected error")
    if outcome["rc"] > 0 and len(lines) != 1:
        found.append(f"{len(lines)} error lines")
    models = (
        sorted(p.name for p in (root / "models").iterdir()) if (root / "models").exists() else []
    )
    if models != [name]:
        found.append(f"models/ holds {models}")
    current = state.current(name)
    if current is None:
        found.append("models/NAME leads nowhere")
    else:
        if current.basename not in (v1, v2):
            found.append(f"models/NAME is {current.basename}")
        if not verify_entry(name, current).ok:
            found.append("the current entry does not verify")
    for entry in state.entries():
        result = verify_entry(entry.name, entry)
        if not result.ok:
            found.append(f"store/{entry.basename} is half-made: {result.problems[:1]}")
    expect = spec["scenario"]
    switched = current is not None and expect == "pull" and current.basename == v2
    if switched and v1 not in state.history(name):
        found.append("switched without a history line")
    rc = outcome["rc"]
    if rc == 16 and current is not None and expect == "pull" and current.basename == v2:
        found.append("says no space although models/ is switched")
    if rc == 0 and current is not None and expect == "pull" and current.basename != v2:
        found.append("exit 0 but not switched")
    if rc not in (0, 16, -signal.SIGKILL) and not (expect == "rollback" and rc == 20 and final):
        found.append(f"exit {rc}")
    if final:
        want = {"pull": v2, "gc": v2, "rollback": v1}[expect]
        if current is None or current.basename != want:
            found.append(f"after the rerun models/NAME is not {want}")
        if expect == "gc" and [e.basename for e in state.entries()] != [v2]:
            found.append(f"after the rerun store/ holds {[e.basename for e in state.entries()]}")
        debris = (
            [p.name for p in (root / "staging").iterdir()] if (root / "staging").exists() else []
        )
        if debris:
            found.append(f"staging/ holds {debris}")
    return found


def preload() -> None:
    """What each command would import and make (the TLS context) is done once, here."""
    for module in (
        "model_pull.check",
        "model_pull.hub",
        "model_pull.layouts",
        "model_pull.metadata",
        "model_pull.pull",
        "model_pull.transfer",
        "huggingface_hub.file_download",
        "huggingface_hub.utils._headers",
        "huggingface_hub.utils._http",
        "httpx2",
    ):
        importlib.import_module(module)
    net.ssl_context()


def main() -> int:
    preload()
    spec = json.loads(Path(sys.argv[1]).read_text())
    tmpfs, work = Path(spec["tmpfs"]), Path(spec["work"])
    root = tmpfs / "root"
    spec["root"] = str(root)
    os.environ["MODEL_PULL_CONNECTIONS"] = "1"
    repo, name = spec["repo"], spec["repo"].split("/")[1]
    spec["name"] = name
    base = ["--root", str(root)]
    fetch = ["fetch", repo, "--gpu", "L4", *base]
    # The baseline: v1 installed (and v2 too, for gc and rollback).
    remove_tree(root)
    for rev in ["v1"] if spec["scenario"] == "pull" else ["v1", "v2"]:
        done = run([*fetch, "--revision", spec[rev]], spec)
        assert done["rc"] == 0, done["stderr"]
    state = StateRoot(root)
    now = state.current(name)
    assert now is not None
    if spec["scenario"] == "pull":
        spec["v1_entry"] = now.basename
    else:
        spec["v1_entry"], spec["v2_entry"] = state.history(name)[-1], now.basename
    remove_tree(work / "baseline")
    shutil.copytree(root, work / "baseline", symlinks=True)
    command = {
        "pull": [*fetch, "--revision", spec["v2"]],
        "gc": ["gc", "--keep", "0", *base],
        "rollback": ["rollback", name, *base],
    }[spec["scenario"]]
    # Count the operations of an undisturbed run (and learn v2's entry).
    restore(spec)
    counted = run(command, spec)
    assert counted["rc"] == 0, counted["stderr"]
    if spec["scenario"] == "pull":
        after = StateRoot(root).current(name)
        assert after is not None
        spec["v2_entry"] = after.basename
    report: dict[str, Any] = {"ops": counted["ops"], "runs": 0, "failures": [], "codes": {}}
    for kind in spec["kinds"]:
        for n in range(1, counted["ops"] + 1):
            restore(spec)
            outcome = run(command, spec, at=n, kind=kind)
            report["runs"] += 1
            key = f"{kind}:{outcome['rc']}"
            report["codes"][key] = report["codes"].get(key, 0) + 1
            found = problems(spec, outcome, final=False)
            remove_tree(tmpfs / "ballast")
            again = run(command, spec)
            found += [f"rerun: {p}" for p in problems(spec, again, final=True)]
            if found:
                report["failures"].append(
                    {
                        "kind": kind,
                        "op": n,
                        "rc": outcome["rc"],
                        "problems": found,
                        "stderr": outcome["stderr"][-600:],
                        "rerun": again["stderr"][-600:],
                    }
                )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
