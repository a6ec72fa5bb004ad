"""SD.Next's installer.py, reduced to `pip` and `install` with the same behaviour where it matters: `>=` becomes
`==`, installs get a RELATIVE `-c constraints.txt`, pip runs in the current folder, failures are not raised.
Every call is recorded (working folder and argument) in `installs.txt` beside this file."""

import os
import subprocess
import sys

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "installs.txt")
opts = {}


def pip(arg, ignore=False, quiet=True, *, uv=True, constraints=True):
    with open(RECORD, "a") as handle:
        handle.write(f"{os.getcwd()}|{arg}\n")
    arg = arg.replace(">=", "==").strip()
    all_args = [arg]
    if constraints and arg.startswith("install"):
        all_args.append("-c constraints.txt")
    result = subprocess.run(
        f'"{sys.executable}" -m pip {" ".join(all_args)}', shell=True, capture_output=True, text=True, check=False
    )
    return result, (result.stdout + result.stderr).strip()


def install(package, friendly=None, ignore=False, reinstall=False, no_deps=False, quiet=False, force=False,
            no_build_isolation=False):  # fmt: skip
    return pip(f"install --upgrade {package}", ignore=ignore, uv=False)
