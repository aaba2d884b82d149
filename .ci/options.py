#!/usr/bin/env python3
"""Holds README's configuration table to the binaries: every option in the table exists in the
`--help` of each binary the table says uses it, and every option a server binary's `--help`
lists is in the table. Usage: .ci/options.py TARGET_DIR (where pirus-catalogue and pirus-runner
were built)."""
import re
import subprocess
import sys
from pathlib import Path

repo = Path(__file__).resolve().parent.parent
bins = Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug")
# Options every clap binary has, not configuration.
IGNORED = {"--help", "--version"}


def table():
    """{option: set of binaries} from the rows of README's "## Configuration" table."""
    text = (repo / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`--"):
            continue
        flags_cell = cells[0].split(" / ")[0]
        users = {"both": {"catalogue", "runner"}}.get(cells[1], {cells[1]})
        for flag in re.findall(r"--[a-z0-9-]+", flags_cell):
            out.setdefault(flag, set()).update(users)
    return out


def helped(binary):
    """The long options of a binary's --help."""
    exe = bins / f"pirus-{binary}"
    text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    return {m for m in re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", text, re.M)} - IGNORED


documented = table()
problems = []
for binary in ("catalogue", "runner"):
    have = helped(binary)
    want = {flag for flag, users in documented.items() if binary in users}
    for flag in sorted(want - have):
        problems.append(f"README lists {flag} for pirus-{binary}, whose --help has no such option")
    for flag in sorted(have - set(documented)):
        problems.append(f"pirus-{binary} --help lists {flag}, which README's configuration table does not")
    for flag in sorted((have & set(documented)) - want):
        problems.append(f"pirus-{binary} has {flag}, but README's table does not say it uses it")
for p in problems:
    print(f"options: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"options: README's configuration table and both binaries' --help agree ({len(documented)} options)")
