"""Readers of the deployment files (Dockerfile stages, compose, manifests) and checks of what they name."""

from __future__ import annotations

import json
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

from eca_serve.cli import build_parser
from eca_serve.cli.serve_commands import cmd_serve
from eca_serve.settings import Settings


ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
K8S_DIR = ROOT / "docker" / "kubernetes"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted(K8S_DIR.rglob("*.yaml"))


# ---- helpers -------------------------------------------------------------------------------------

def dockerfile_stages(text: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(global ARG defaults, stages); each stage: ``from``, ``name``, ``instructions`` [(INSTR, args)]."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    global_args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            parts = rest.split()
            stages.append({"from": parts[0], "name": parts[2] if len(parts) > 2 else None, "instructions": []})
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1]["instructions"].append((keyword, rest))
    return global_args, stages


def stage(stages: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(s for s in stages if s["name"] == name)


def stage_env(s: dict[str, Any]) -> dict[str, str]:
    env = {}
    for keyword, rest in s["instructions"]:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def instruction(s: dict[str, Any], keyword: str) -> list[str]:
    return [rest for k, rest in s["instructions"] if k == keyword]


def exec_form(args: str) -> list[str]:
    """``CMD ["a", "b"]`` -> ["a", "b"]; only the JSON (exec) form is accepted."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(s: dict[str, Any]) -> list[str]:
    (args,) = instruction(s, "HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--start-period=" in options, "models load before readiness: the healthcheck needs a start period"
    return exec_form(command)


def check_settings_env(env: dict[str, str]) -> Settings:
    """Every ECA_SERVE_* variable names a real setting and its value validates."""
    values = {}
    for key, value in env.items():
        if key.startswith("ECA_SERVE_"):
            field = key.removeprefix("ECA_SERVE_").lower()
            assert field in Settings.model_fields, f"{key} is not an eca-serve setting"
            values[field] = value
    assert values, "no ECA_SERVE_* settings"
    return Settings(**values)


def check_serve_command(command: list[str]) -> None:
    """``command`` is the ``eca-serve`` console script running ``serve`` (as the CLI parses it)."""
    (script,) = entry_points(group="console_scripts", name=command[0])
    assert script.value == "eca_serve.cli:main", command
    assert build_parser().parse_args(command[1:]).func is cmd_serve, command


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def seconds(duration: str) -> float:
    """Compose durations: ``45s``, ``1m30s``."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    return 60 * int(parts[1] or 0) + int(parts[2] or 0)
