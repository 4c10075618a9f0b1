"""The README's two-command quickstart is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert "pytest" in commands[1] and "pytest" not in commands[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci


def test_first_command_installs_and_runs_the_demo():
    first = quickstart_commands()[0]
    assert first == "python3 -m pip install torch==2.13.0 -e . && stabkern demo"


def test_readme_figures_and_docs_exist():
    text = (ROOT / "README.md").read_text()
    top = text.split("## Layout", 1)[0]
    for target in ("docs/demo_attenuation.png", "docs/card.md", "docs/tooling.md"):
        assert target in top and (ROOT / target).is_file(), target


def test_console_script_is_declared():
    assert 'stabkern = "stabkern.cli.main:main"' in (ROOT / "pyproject.toml").read_text()
