"""Install and verify what FramePack needs from requirements.txt; exit 1, one line per problem, if anything is off.

Three ways this runs, all the same:
- SD.Next runs it (`installer.run_extension_installer`): a subprocess with cwd = this extension folder and
  PYTHONPATH = SD.Next's root. A non-zero exit is logged by SD.Next as an installer error.
- From SD.Next's root: `python extensions/<folder>/install.py`.
- Standalone: `python install.py` in this folder's environment (no host).

What it does:
1. Finds the host: SD.Next's root is where its `installer.py` and `modules/` are (from PYTHONPATH, else two
   folders up).
2. Installs each requirement that is missing or too old. Under a host, the packages the host owns (torch,
   gradio, diffusers...) are never installed: they are only verified. Standalone, only torch is left out (its
   build depends on the machine; see README). An install goes through SD.Next's `installer.pip` when the
   requirement survives that function (it rewrites `>=` to `==`, which would pin a version that may not exist,
   and appends a relative `-c constraints.txt`, so it runs with SD.Next's root as the working folder); otherwise
   through `python -m pip install REQUIREMENT -c <SD.Next root>/constraints.txt` (absolute path; no `-c` without a
   host or that file).
3. Verifies every requirement: installed at an acceptable version and importable (found on the path; nothing
   is imported, so a run with nothing to install takes well under 2 s).
4. Prints one line per problem (what, why, the exact command that fixes it) to stderr and exits 1; exits 0
   otherwise, quietly except for "FramePack: installing ..." lines.

`problems()` (verification only, no install) is what the SD.Next entry script uses to decide on its degraded mode.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
# The host's own stack: verified, never installed or upgraded by an extension.
HOST_OWNED = {
    "torch", "torchvision", "torchaudio", "gradio", "gradio-client", "fastapi", "starlette", "pydantic",
    "pydantic-core", "uvicorn", "httpx", "numpy", "pillow", "transformers", "diffusers", "accelerate",
    "safetensors", "tokenizers", "protobuf", "tqdm",
}  # fmt: skip
# Versions acceptable under a host where they differ from requirements.txt (which is for standalone installs):
# the tab works on SD.Next's Gradio 3.43 as well as on current Gradio.
HOST_ACCEPTS = {"gradio": ">=3.43"}
NOT_INSTALLED_STANDALONE = {"torch"}  # README: install the torch build for your machine first
IMPORT_NAMES = {
    "opencv-python-headless": "cv2",
    "pillow": "PIL",
    "protobuf": "google.protobuf",
    "optimum-quanto": "optimum.quanto",
    "huggingface-hub": "huggingface_hub",
}
PIP_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Requirement:
    name: str
    spec: str  # PEP 440 specifier set, "" for any version

    def __str__(self) -> str:
        return f"{self.name}{self.spec}"


@dataclass(frozen=True)
class Problem:
    requirement: str
    reason: str
    fix: str

    def line(self) -> str:
        return f"FramePack requirement {self.requirement}: {self.reason}. Fix: {self.fix}"


@dataclass(frozen=True)
class Host:
    """SD.Next's root folder and its constraints file (None when it has none)."""

    root: Path
    constraints: Path | None


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(line: str) -> tuple[str, str] | None:
    """'name[extra]>=1.2 ; marker  # comment' -> ('name', '>=1.2'), None for blanks/comments/options."""
    line = line.split("#", 1)[0].split(";", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", line)
    if not match:
        return None
    return match.group(1), match.group(3).replace(" ", "")


def read_requirements(path: Path = REQUIREMENTS) -> list[Requirement]:
    return [Requirement(*parsed) for parsed in map(parse, path.read_text().splitlines()) if parsed is not None]


def _specifier_set(spec: str):
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # a bare environment: pip's own copy
        from pip._vendor.packaging.specifiers import SpecifierSet
    return SpecifierSet(spec)


def satisfies(installed: str, spec: str) -> bool:
    """Whether version `installed` meets `spec` (a PEP 440 specifier set; prereleases count, as hosts install
    development builds of diffusers and transformers). An unparsable spec counts as met, an unparsable version
    as not met."""
    try:
        specifiers = _specifier_set(spec)
    except ValueError:  # InvalidSpecifier
        return True
    return specifiers.contains(installed, prereleases=True)


# ---------------------------------------------------------------------------------------------- the host


def find_host() -> Host | None:
    """SD.Next's root: where `installer` resolves (SD.Next puts its root on PYTHONPATH), else two folders up
    from this extension (`<root>/extensions/<folder>/install.py`). None standalone."""
    candidates = []
    try:
        spec = importlib.util.find_spec("installer")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).resolve().parent)
    candidates.append(HERE.parent.parent)
    for root in candidates:
        if (root / "installer.py").is_file() and (root / "modules").is_dir():
            constraints = root / "constraints.txt"
            return Host(root, constraints if constraints.is_file() else None)
    return None


def _host_installer(host: Host):
    """SD.Next's `installer` module (from its root), or None when it cannot be imported."""
    if str(host.root) not in sys.path:
        sys.path.insert(0, str(host.root))
    try:
        installer = importlib.import_module("installer")
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return None
    if Path(getattr(installer, "__file__", "")).resolve().parent != host.root or not hasattr(installer, "pip"):
        return None
    return installer


def owned_by_host(requirement: Requirement, host: Host | None) -> bool:
    return canonical(requirement.name) in (HOST_OWNED if host is not None else NOT_INSTALLED_STANDALONE)


def acceptable_spec(requirement: Requirement, host: Host | None) -> str:
    if host is not None:
        return HOST_ACCEPTS.get(canonical(requirement.name), requirement.spec)
    return requirement.spec


# ---------------------------------------------------------------------------------------------- checking


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_name(name: str) -> str:
    return IMPORT_NAMES.get(canonical(name), canonical(name).replace("-", "_"))


def importable(module: str) -> bool:
    """Whether `module` is found on the path (its parent packages are imported, the module itself is not)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def pip_command(requirement: str, host: Host | None) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", requirement]
    if host is not None and host.constraints is not None:
        command += ["-c", str(host.constraints)]
    return command


def _shell(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def fix_for(requirement: Requirement, host: Host | None) -> str:
    if host is not None and owned_by_host(requirement, host):
        return (
            f"SD.Next installs {requirement.name} itself: update SD.Next (git pull, then start it) or run "
            f"`{_shell(pip_command(f'{requirement.name}{acceptable_spec(requirement, host)}', host))}`"
        )
    if host is None and owned_by_host(requirement, host):
        example = _shell(pip_command("torch==2.13.0", None))
        return f"install the {requirement.name} build for this machine first (see README), e.g. `{example}`"
    return f"`{_shell(pip_command(str(requirement), host))}`"


def check(requirement: Requirement, host: Host | None) -> str | None:
    """Why `requirement` is not usable here, or None when it is."""
    version = installed_version(requirement.name)
    spec = acceptable_spec(requirement, host)
    if version is None:
        return "not installed"
    if spec and not satisfies(version, spec):
        return f"version {version} is installed, {spec} is needed"
    module = import_name(requirement.name)
    if not importable(module):
        return f"version {version} is installed but its module {module!r} is not found"
    return None


def problems(requirements: list[Requirement] | None = None, host: Host | None = None) -> list[Problem]:
    """Every requirement that is not usable here, with how to fix it (nothing is installed)."""
    importlib.invalidate_caches()
    requirements = read_requirements() if requirements is None else requirements
    found = []
    for requirement in requirements:
        reason = check(requirement, host)
        if reason is not None:
            found.append(Problem(str(requirement), reason, fix_for(requirement, host)))
    return found


def missing(requirements: Path = REQUIREMENTS, host: Host | None = None) -> list[str]:
    """Requirement strings that this script would install (not usable now, and not the host's)."""
    return [
        str(requirement)
        for requirement in read_requirements(requirements)
        if not owned_by_host(requirement, host) and check(requirement, host) is not None
    ]


# ---------------------------------------------------------------------------------------------- installing


def pip_reason(output: str) -> str:
    """pip's first ERROR line, with the lines under "The conflict is caused by:" when pip gives them."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    reason = (errors or lines or ["no output"])[0]
    if "The conflict is caused by:" in lines:
        causes = lines[lines.index("The conflict is caused by:") + 1 :]
        causes = causes[: next((i for i, line in enumerate(causes) if line.startswith("To fix")), len(causes))]
        reason += " " + "; ".join(causes)
    return reason[:400]


def install(requirement: str, host: Host | None) -> str | None:
    """Install one requirement; None on success, else the installer's last error line."""
    installer = _host_installer(host) if host is not None and ">=" not in requirement else None
    if installer is not None:
        previous = os.getcwd()
        os.chdir(host.root)  # its `-c constraints.txt` is relative to the working folder
        try:
            result, output = installer.pip(f"install {requirement}", ignore=True, quiet=True)
        finally:
            os.chdir(previous)
        if result is not None and result.returncode == 0:
            return None
        # its offline mode returns no result; otherwise fall back to pip with the absolute constraints path
        if result is None:
            return f"SD.Next's installer did not run pip ({str(output).strip() or 'no reason given'})"
    result = subprocess.run(
        pip_command(requirement, host),
        cwd=host.root if host is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=PIP_TIMEOUT_SECONDS,
    )
    if result.returncode == 0:
        return None
    return f"pip failed: {pip_reason(result.stderr + chr(10) + result.stdout)}"


def main() -> int:
    host = find_host()
    requirements = read_requirements()
    install_errors: dict[str, str] = {}
    for requirement in requirements:
        if owned_by_host(requirement, host) or check(requirement, host) is None:
            continue
        print(f"FramePack: installing {requirement}", flush=True)
        error = install(str(requirement), host)
        if error is not None:
            install_errors[str(requirement)] = error
    found = problems(requirements, host)
    for problem in found:
        reason = problem.reason
        if problem.requirement in install_errors:
            reason += f" ({install_errors[problem.requirement]})"
        print(Problem(problem.requirement, reason, problem.fix).line(), file=sys.stderr, flush=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
