"""The package as a whole: a checkout behaves like an install, and the module layering."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hiercell"


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_checkout_serves_segmentation_and_models_from_the_root_folders():
    r = _run("-c", "import hiercell, hiercell.segmentation as s, hiercell.models as m; "
                   "from hiercell.bundle import default_bundle_path as d; "
                   "print(hiercell.__file__, s.__file__, m.__file__, d().is_dir())")
    assert r.returncode == 0, r.stderr
    here, seg, models, found = r.stdout.split()
    assert found == "True"
    if Path(here).parent == PACKAGE:  # running from the checkout (editable or not installed)
        assert Path(seg) == ROOT / "segmentation" / "__init__.py"
        assert Path(models) == ROOT / "models" / "__init__.py"


def test_python_dash_m_hiercell():
    r = _run("-m", "hiercell", "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage: hiercell" in r.stdout and "classify" in r.stdout


def _imports(path: Path, module: str):
    """Modules of ``hiercell`` that ``path`` imports, lazily or not (package face excluded)."""
    tree = ast.parse(path.read_text())
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("hiercell") and name != "hiercell" and _module_path(name):
                out.add(name)
    return out


def _module_path(name):
    rel = Path(*name.split(".")[1:])
    for cand in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def test_import_graph_has_no_cycle():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name == "hiercell" or parts[-1] == "__main__":
            continue  # the package face
        graph[name] = {m for m in _imports(path, name) if m != name}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_private_names_imported_across_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hiercell")):
                offenders += [f"{path.name}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders
