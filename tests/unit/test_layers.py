"""Arrows point down only: install/ and health/ never import each other (issue 11)."""

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((AGENT / package).rglob("*.py")):
        names = found.setdefault(str(path.relative_to(AGENT.parent)), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize(("package", "forbidden"), [("install", "health"), ("health", "install"),
                                                   ("driver", "install"), ("driver", "health"),
                                                   ("host", "install"), ("host", "health")])
def test_no_import_across_the_layers(package, forbidden):
    bad = {f: sorted(n for n in names if n == f"agent.{forbidden}"
                     or n.startswith(f"agent.{forbidden}."))
           for f, names in imported_modules(package).items()}
    assert {f: n for f, n in bad.items() if n} == {}
