"""Run a program the way hashicorp/terraform-provider-external 2.x does, and judge its answer.

What the provider does (internal/provider/data_source.go; shared/reference/terraform-external.md):

- `program[0]` is found on PATH (Go's exec.LookPath); no shell; the rest are its arguments.
- The environment is Terraform's whole environment; the directory is `working_dir`.
- stdin is `json.Marshal(query)` of a map[string]string: the query map itself (not wrapped
  in `{"query": ...}`), keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped, no newline;
  entries whose value is null are left out, `{}` when there is no query.
- A non-zero exit fails the read and shows stderr; stdout is then ignored.
- Exit 0: stdout goes through `json.Unmarshal` into a map[string]string. Go tolerates
  whitespace around the object (and, quirkily, a bare `null`); any other byte, a
  non-string value or a non-object fails the read.

The harness is stricter than Go where that only catches sloppiness: on success stdout must
be exactly one JSON object, without even surrounding whitespace, and without duplicate keys.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import BIN

PROGRAM = ("kubeca", "terraform")
GO_WHITESPACE = b" \t\r\n"
# encoding/json's HTML-safe escaping, applied by json.Marshal.
GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def terraform_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Terraform's whole environment, with the venv's bin first on PATH (as for an operator
    who installed kubeca there)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(extra or {})
    return env


def go_marshal_query(query: Mapping[str, str | None]) -> bytes:
    """stdin exactly as the provider writes it: json.Marshal of the query, nulls dropped."""
    kept = {k: v for k, v in query.items() if v is not None}
    for key, value in kept.items():
        assert isinstance(key, str) and isinstance(value, str), "a query is a map of strings"
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in GO_ESCAPES.items():
        text = text.replace(char, escaped)  # these occur only inside JSON strings
    return text.encode()


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.2f}s\n"
            f"stdout: {self.stdout[:600]!r}\nstderr: {self.stderr[:2000]!r}"
        )


def run_program(
    stdin: bytes,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    program: Sequence[str] = PROGRAM,
    timeout: float = 60,
) -> Outcome:
    """One read of the data source: argv[0] resolved on the environment's PATH, no shell."""
    environment = dict(env or terraform_env())
    executable = shutil.which(program[0], path=environment.get("PATH"))
    assert executable is not None, f"{program[0]} is not on PATH: {environment.get('PATH')}"
    started = time.monotonic()
    completed = subprocess.run(
        [executable, *program[1:]],
        input=stdin,
        capture_output=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Outcome(
        completed.returncode,
        completed.stdout,
        completed.stderr.decode(errors="replace"),
        time.monotonic() - started,
    )


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in the result: {keys}"
    return dict(pairs)


def decode_result(stdout: bytes) -> dict[str, str]:
    """The result map, or AssertionError for anything the provider (or this harness's
    stricter reading) would refuse."""
    assert stdout, "empty stdout: the provider fails the read"
    assert stdout[:1] not in GO_WHITESPACE and stdout[-1:] not in GO_WHITESPACE, (
        f"whitespace around the JSON object on stdout: {stdout[:80]!r}...{stdout[-80:]!r}"
    )
    text = stdout.decode("utf-8")  # Go would replace invalid UTF-8; the program must not send it
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    try:
        value, end = decoder.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON ({exc}): {stdout[:200]!r}") from None
    assert end == len(text), f"stray bytes after the JSON object: {text[end : end + 200]!r}"
    assert isinstance(value, dict), f"stdout is a JSON {type(value).__name__}, not an object"
    for key, item in value.items():
        assert isinstance(item, str), f"result value {key!r} is {type(item).__name__}: {item!r}"
    return value


def read(
    query: Mapping[str, str | None],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, str]:
    """A successful read: exit 0 and a valid result, else AssertionError with the details."""
    outcome = run_program(go_marshal_query(query), env=env, cwd=cwd)
    assert outcome.returncode == 0, outcome.describe()
    try:
        return decode_result(outcome.stdout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{outcome.describe()}") from None


def assert_failed(outcome: Outcome, *fragments: str, exit_code: int | None = None) -> str:
    """A failed read as Terraform shows it well: non-zero exit, nothing on stdout, exactly
    one line on stderr naming the problem, no traceback. Returns that line."""
    assert outcome.returncode != 0, outcome.describe()
    if exit_code is not None:
        assert outcome.returncode == exit_code, outcome.describe()
    assert outcome.stdout == b"", outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and outcome.stderr.endswith("\n"), outcome.describe()
    line = lines[0]
    assert line.startswith("kubeca terraform: "), outcome.describe()
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def _go_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    return f"{platform.system().lower()}_{arch.get(machine, machine)}"


def provider_mirror(*types: str) -> Path | None:
    """A local directory holding every hashicorp/<type> in Terraform's mirror layout,
    if any.

    Looks where Terraform's implied local mirrors are on Unix, in the plugin cache, and
    in /opt/tf-plugins (where this machine keeps the providers it has)."""
    home = Path.home()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    data_dirs = (os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":")
    roots = [
        home / ".terraform.d" / "plugins",
        data_home / "terraform" / "plugins",
        *(Path(d) / "terraform" / "plugins" for d in data_dirs if d),
        *(
            [Path(os.environ["TF_PLUGIN_CACHE_DIR"])]
            if os.environ.get("TF_PLUGIN_CACHE_DIR")
            else []
        ),
        Path("/opt/tf-plugins"),
    ]
    target = _go_platform()

    def holds(root: Path, kind: str) -> bool:
        provider = root / "registry.terraform.io" / "hashicorp" / kind
        return any(provider.glob(f"*/{target}/terraform-provider-{kind}*")) or any(
            provider.glob(f"terraform-provider-{kind}_*_{target}.zip")
        )

    for root in roots:
        if all(holds(root, kind) for kind in types):
            return root
    return None


def external_provider_mirror() -> Path | None:
    return provider_mirror("external")
