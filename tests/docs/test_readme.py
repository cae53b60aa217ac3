"""The README against the code: settings and exit-code tables both ways, links inside."""

import inspect
import re
import signal
from pathlib import Path

from agent import errors
from agent.settings import OPTIONS

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# Read outside Settings by the CLI (where the failure line goes); documented with them.
OUTSIDE_SETTINGS = {"GRID_AGENT_TERMINATION_LOG"}
SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Terminated: 128 + the signal


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    level = title.split()[0]
    end = re.search(rf"\n#{{1,{len(level)}}} ", text[start + 1:])
    return text[start: start + 1 + end.start()] if end else text[start:]


def table_rows(text: str) -> list[list[str]]:
    """Cells of each data row of the markdown tables in `text`."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"\|[-| ]+\|$", line):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
    return rows


def configuration_table() -> dict[str, str]:
    """GRID_AGENT_* variable -> its default cell, from the README's Configuration table."""
    rows = table_rows(section("## Configuration"))
    return {r[0].strip("`"): r[1] for r in rows if r[0].startswith("`GRID_AGENT_")}


def test_every_setting_is_in_the_readme_and_nothing_else():
    documented = set(configuration_table())
    options = {o.env for o in OPTIONS}
    extra = OUTSIDE_SETTINGS - options
    missing = sorted(options - documented)
    unknown = sorted(documented - options - extra)
    assert not missing, f"README's Configuration table lacks {missing} (agent/settings.py)"
    assert not unknown, f"README documents {unknown}, which agent/settings.py does not read"
    assert extra <= documented


def test_the_readme_defaults_are_the_options_defaults():
    table = configuration_table()
    wrong = []
    for option in OPTIONS:
        cell = table.get(option.env, "<no row>")
        # An empty default is explained in words: "(catalog's)", "(any)"...
        expected = f"`{option.default}`" if option.default else "("
        if not cell.startswith(expected) or (option.default and cell != expected):
            wrong.append(f"{option.env}: README says {cell}, settings.py {option.default!r}")
    assert not wrong, "\n".join(wrong)


def agent_exit_codes() -> set[int]:
    """Every exit code the agent can end with: 0, each AgentError class's, the signals'."""
    table = getattr(errors, "EXIT_CODES", None)  # the one table: ((codes...), meaning) rows
    if table is not None:
        return {code for codes, _ in table for code in codes}
    codes = {0}
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.AgentError) and isinstance(cls.exit_code, int):
            codes.add(cls.exit_code)
    return codes | {128 + s for s in SIGNALS}


def readme_codes(title: str) -> set[int]:
    codes = set()
    for row in table_rows(section(title)):
        if re.fullmatch(r"\d+(, \d+)*", row[0]):
            codes |= {int(c) for c in row[0].split(", ")}
    return codes


def test_the_exit_code_table_is_the_agents():
    assert readme_codes("## Exit codes") == agent_exit_codes()


def test_each_exit_code_row_says_what_the_table_in_errors_py_says():
    readme: dict[str, str] = {}
    for row in table_rows(section("## Exit codes")):  # the first table; troubleshooting follows
        if re.fullmatch(r"\d+(, \d+)*", row[0]):
            readme.setdefault(row[0], row[1])
    agent = {", ".join(str(c) for c in codes): meaning for codes, meaning in errors.EXIT_CODES}
    assert readme == agent


def test_troubleshooting_covers_every_failure_code_below_128():
    failures = {c for c in agent_exit_codes() if 0 < c < 128}
    assert readme_codes("### Troubleshooting by exit code") == failures


def markdown_files() -> list[Path]:
    docs = sorted((REPO / "docs").rglob("*.md")) if (REPO / "docs").is_dir() else []
    return [README, REPO / "tests" / "simnode" / "README.md", *docs]


def test_every_relative_link_stays_in_the_repository_and_exists():
    broken = []
    for md in markdown_files():
        if not md.exists():
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same file
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(REPO) or not path.exists():
                broken.append(f"{md.relative_to(REPO)}: {target}")
        if "../shared/" in md.read_text():
            broken.append(f"{md.relative_to(REPO)}: mentions ../shared/ (not in a clone)")
    assert not broken, broken


def test_every_design_note_the_code_cites_is_in_the_repository():
    cited = set()
    for root in ("agent", "tests", "scripts"):
        for path in (REPO / root).rglob("*.py"):
            cited |= {(path, m) for m in re.findall(r"[\w/-]+\.md\b", path.read_text())}
    missing = [f"{p.relative_to(REPO)}: {name}" for p, name in sorted(cited)
               if not (REPO / name).exists() and not (REPO / "docs" / "design" / name).exists()]
    assert not missing, missing
