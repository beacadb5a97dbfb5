"""manifest.Manifest.load: the documented format, and one clear error for each kind of bad file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from model_pull.datamodel import Layout, Runtime
from model_pull.errors import ExitCode, ModelPullError
from model_pull.manifest import Manifest, OnDemand

REV = "0123456789abcdef0123456789abcdef01234567"
DOCUMENTED = {
    "version": 1,
    "root": "/var/lib/inference",
    "endpoint": None,
    "tokenFile": None,
    "models": {
        "tiny": {
            "repo": "org/tiny",
            "revision": REV,
            "include": ["*.gguf"],
            "exclude": [],
            "layout": "gguf",
            "tritonName": None,
            "narHash": None,
            "engineDefaults": {},
            "patchTokenizer": False,
            "units": ["llama-server-main.service"],
        }
    },
    "units": {
        "llama-server-main.service": {
            "runtime": "llama-server",
            "models": ["tiny"],
            "cudaCapabilities": ["12.0"],
        }
    },
    "caches": {
        "urls": ["http://fleet-puller:5000"],
        "trustedPublicKeys": ["fleet-1:LssfjViz6xR/Ob2lf3fksT2BG6Lusi6KpUHbdyPfbPY="],
        "stalledTimeout": 60,
    },
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    return path


def test_documented_example(tmp_path: Path):
    m = Manifest.load(write(tmp_path, DOCUMENTED))
    assert m.root == Path("/var/lib/inference")
    assert (m.endpoint, m.token_file) == (None, None)
    tiny = m.models["tiny"]
    assert (tiny.repo, tiny.revision, tiny.layout) == ("org/tiny", REV, Layout.GGUF)
    assert (tiny.include, tiny.exclude, tiny.units) == (
        ("*.gguf",),
        (),
        ("llama-server-main.service",),
    )
    assert (tiny.triton_name, tiny.nar_hash, tiny.patch_tokenizer) == (None, None, False)
    unit = m.units["llama-server-main.service"]
    assert (unit.runtime, unit.models, unit.cuda_capabilities) == (
        Runtime.LLAMA_SERVER,
        ("tiny",),
        ("12.0",),
    )
    assert m.caches.urls == ("http://fleet-puller:5000",)
    assert m.caches.trusted_public_keys == ("fleet-1:LssfjViz6xR/Ob2lf3fksT2BG6Lusi6KpUHbdyPfbPY=",)
    assert m.caches.stalled_timeout == 60


def test_optional_keys_default_and_env_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = {
        "version": 1,
        "models": {
            "x": {
                "repo": "o/x",
                "revision": "main",
                "layout": "hf",
                "tokenFile": "ignored, unknown key here",
            }
        },
        "tokenFile": "/run/secrets/hf",
    }
    monkeypatch.setenv("MODEL_PULL_MANIFEST", str(write(tmp_path, data)))
    m = Manifest.load()
    assert m.root == Path("/var/lib/inference")
    assert m.token_file == Path("/run/secrets/hf")
    assert m.models["x"].units == () and m.units == {}
    assert (m.caches.urls, m.caches.trusted_public_keys, m.caches.stalled_timeout) == ((), (), 60)


def test_a_unit_on_demand_carries_its_idle_timeout_and_sockets(tmp_path: Path):
    data: dict[str, Any] = copy.deepcopy(DOCUMENTED)
    unit = data["units"]["llama-server-main.service"]
    unit["onDemand"] = {"idleTimeout": 900, "sockets": ["llama-server-main.socket"]}
    on_demand = Manifest.load(write(tmp_path, data)).units["llama-server-main.service"].on_demand
    assert on_demand == OnDemand(idle_timeout=900, sockets=("llama-server-main.socket",))
    # absent or null: always on (a manifest written before on-demand serving reads the same)
    unit["onDemand"] = None
    loaded = Manifest.load(write(tmp_path, data))
    assert loaded.units["llama-server-main.service"].on_demand is None
    loaded = Manifest.load(write(tmp_path, DOCUMENTED))
    assert loaded.units["llama-server-main.service"].on_demand is None


ON_DEMAND = ("units", "llama-server-main.service", "onDemand")


def mutate(path: str | tuple[str, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(DOCUMENTED)
    *parents, last = path.split(".") if isinstance(path, str) else path
    target: Any = data
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (mutate("version", 2), "has version 2; this model-pull reads 1"),
        (mutate("models", []), "models must be an object"),
        (mutate("models.tiny.repo", KeyError), "models.tiny.repo is missing"),
        (mutate("models.tiny.revision", 7), "models.tiny.revision must be a string"),
        (
            mutate("models.tiny.layout", "zip"),
            "models.tiny.layout is 'zip', not one of dual, single",
        ),
        (mutate("models.tiny.include", "*.gguf"), "models.tiny.include must be a list"),
        (mutate("models.tiny.narHash", 1), "models.tiny.narHash must be a string or null"),
        (mutate("models.tiny.units", ["vllm.service"]), "names vllm.service, not in units"),
        (
            mutate(("units", "llama-server-main.service"), {"runtime": "tgi", "models": []}),
            "runtime is 'tgi'",
        ),
        ([1, 2], "the top level must be an object"),
        (mutate(ON_DEMAND, {"sockets": ["x.socket"]}), "onDemand.idleTimeout is missing"),
        (
            mutate(ON_DEMAND, {"idleTimeout": 0, "sockets": ["x.socket"]}),
            "onDemand.idleTimeout must be a positive number of seconds",
        ),
        (
            mutate(ON_DEMAND, {"idleTimeout": 60, "sockets": []}),
            "onDemand.sockets must name at least one .socket unit",
        ),
        (
            mutate(ON_DEMAND, {"idleTimeout": 60, "sockets": ["x.service"]}),
            "onDemand.sockets must name at least one .socket unit",
        ),
        (mutate(ON_DEMAND, "yes"), "onDemand must be an object or null"),
        (mutate("caches.urls", "http://a"), "caches.urls must be a list"),
        (mutate("caches.stalledTimeout", 0), "caches.stalledTimeout must be at least 1"),
        (mutate("caches", ["http://a"]), "caches must be an object"),
    ],
)
def test_malformed_manifest_is_one_clear_error(tmp_path: Path, data: object, says: str):
    path = write(tmp_path, data)
    with pytest.raises(ModelPullError) as err:
        Manifest.load(path)
    assert err.value.code is ExitCode.BAD_MANIFEST
    assert str(path) in err.value.message
    assert says in err.value.message


def test_missing_and_unparsable_files(tmp_path: Path):
    with pytest.raises(ModelPullError) as err:
        Manifest.load(tmp_path / "absent.json")
    assert err.value.code is ExitCode.BAD_MANIFEST
    assert "no manifest at" in err.value.message and "MODEL_PULL_MANIFEST" in str(err.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelPullError) as err:
        Manifest.load(bad)
    assert err.value.code is ExitCode.BAD_MANIFEST and "is not JSON" in err.value.message
