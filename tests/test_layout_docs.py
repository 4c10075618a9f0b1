"""The layout docs name paths that exist: README.md's "Layout" block and csrc/README.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_block() -> str:
    return (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]


def test_readme_layout_folders_exist():
    paths = []
    for line in layout_block().splitlines():
        first = line.split()[0] if line.strip() else ""
        if first.endswith("/") and not line.startswith(" "):
            paths.append(first)
        if first.startswith("tests/backends/"):  # one line for several sibling folders
            paths += ["tests/" + p.strip() for p in line.split("   ")[0].split(",")[1:]]
    assert len(paths) >= 15, paths
    missing = [p for p in paths if not (ROOT / p).is_dir()]
    assert not missing, missing


def test_readme_layout_covers_every_package_folder():
    """A folder added to the package or csrc/ appears in the Layout block."""
    block = layout_block()
    folders = [p for base in ("stabkern", "csrc") for p in (ROOT / base).rglob("*")
               if p.is_dir() and "__pycache__" not in p.parts and any(f.is_file() for f in p.iterdir())]
    missing = [str(p.relative_to(ROOT)) for p in folders if f"{p.relative_to(ROOT)}/" not in block]
    assert not missing, missing


def test_csrc_readme_names_existing_files():
    text = (ROOT / "csrc" / "README.md").read_text()
    names = set(re.findall(r"`([\w./-]+\.(?:h|cpp|cu|py|md|json))`", text))
    names |= {n for n in re.findall(r"`([\w./-]+/)`", text)}
    assert len(names) > 20, names
    csrc = ROOT / "csrc"
    missing = [n for n in names if not ((ROOT / n).exists() or (csrc / n).exists() or any(csrc.rglob(n.rstrip("/"))))]
    assert not missing, missing


def test_no_file_cites_a_document_outside_the_repository():
    """Source and docs cite docs/spec.md or README, never the design notes kept outside the tree."""
    outside = "DESIGN" + ".md"
    files = [ROOT / "README.md", ROOT / "setup.py"] + [
        p for base in ("stabkern", "tests", "benchmarks", "csrc", "docs", "examples") for p in (ROOT / base).rglob("*")
        if p.suffix in {".py", ".md", ".h", ".cpp", ".cu", ".sh", ".txt"} and "results" not in p.parts]
    citing = [str(p.relative_to(ROOT)) for p in files if outside in p.read_text(errors="replace")]
    assert not citing, citing
