"""Readers for deploy/: the .env file, compose-style interpolation, and the Dockerfile.

No Docker engine is needed: the compose file is interpolated here the way
`docker compose` does it, then parsed by the compose-spec package, and the Dockerfile
is split into stages and instructions.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stack import REPO

DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_FILE = DEPLOY / ".env"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"

class InterpolationError(ValueError):
    pass


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str], *, where: str = "") -> str:
    """Substitute $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}
    and $$ as compose does. An unset variable without a default is an error here
    (compose would only warn and substitute an empty string)."""

    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-", ":?"):
            unset = value is None or value == ""
        else:
            unset = value is None
        if op in (":-", "-") and unset:
            return arg or ""
        if op in (":?", "?") and unset:
            raise InterpolationError(f"{where}: required variable {name} is missing: {arg}")
        if value is None:
            raise InterpolationError(f"{where}: variable {name} is not set")
        return value

    return _VAR.sub(substitute, text)


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """Parse a compose .env file: KEY=VALUE lines, # comments, optional quotes, and
    references to variables defined above."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        if key in env:
            raise ValueError(f"{path}:{number}: {key} set twice")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            env[key] = value[1:-1]
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        env[key] = interpolate(value, env, where=f"{path}:{number}")
    return env


def interpolated_compose(env: dict[str, str]) -> str:
    return interpolate(COMPOSE_FILE.read_text(encoding="utf-8"), env, where=str(COMPOSE_FILE))


def load_compose() -> dict[str, Any]:
    """The compose file as `docker compose` sees it with deploy/.env."""
    # PyYAML's SafeLoader resolves the `<<` merge keys the file uses for shared settings
    return yaml.safe_load(interpolated_compose(read_env_file()))


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        assert len(found) == 1, f"expected one stage named {name}"
        return found[0]

    def resolve(self, ref: str, args: dict[str, str]) -> str:
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
                      lambda m: args[m.group(1) or m.group(2)], ref)

    def chain(self, stage: Stage, args: dict[str, str]) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first, ending at the
        first stage whose base is an image rather than another stage."""
        out = [stage]
        seen = {id(stage)}
        while True:
            base = self.resolve(out[-1].base, args)
            parents = [s for s in self.stages if s.name == base]
            if not parents:
                return out
            parent = parents[0]
            assert id(parent) not in seen, "cycle in FROM"
            seen.add(id(parent))
            out.append(parent)

    def image_chain(self, service: str) -> list[Stage]:
        """The stages of the image built with SERVICE=service, final stage first."""
        return self.chain(self.stages[-1], dict(self.global_args, SERVICE=service))

    def image_env(self, service: str) -> dict[str, str]:
        """The ENV the image of `service` carries (what a container starts with)."""
        env: dict[str, str] = {}
        for stage in reversed(self.image_chain(service)):
            for instr in stage.all("ENV"):
                for word in shlex.split(instr.args):
                    key, sep, value = word.partition("=")
                    assert sep, f"line {instr.line}: use ENV KEY=VALUE"
                    env[key] = value
        return env


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical.append((start, " ".join(p for p in pending if p)))
        pending = []
    assert not pending, "Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may precede the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, line))
    return Dockerfile(global_args=global_args, stages=stages)
