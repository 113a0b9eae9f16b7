"""The package's folders are its map, and imports follow them one way.

`hub_export/model/` (the biLM) imports only the shared base modules at the top of the
package; `export/`, `serving/`, `corpus/` and `train/` import `model/` (and `signatures`)
and the base, and of each other only the edges listed in ALLOWED; `cli/` sits on top.
No module imports another module's underscore names.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hub_export"
BASE = {"atomic", "errors", "files", "progress", "textfiles"}
JOBS = {"export", "serving", "corpus", "train"}
# export writes TF Serving's warm-up requests into every export (serving.warmup).
ALLOWED = {("export", "serving")}


def imports() -> list[tuple[str, str, list[str]]]:
    """(importing module, imported module, names) for every hub_export import."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hub_export"):
                found.append((module, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, []) for a in node.names if a.name.startswith("hub_export")]
    return found


def part(module: str) -> str:
    """The folder a module belongs to: model, export, ..., cli, or base."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "base"


def test_every_module_is_in_a_folder_or_the_base():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == BASE, f"modules at the top of hub_export/ besides the base: {top - BASE}"


def test_dependencies_run_one_way():
    wrong = []
    for importer, imported, names in imports():
        a = part(importer)
        # `from hub_export.export import exporter` imports the module exporter.
        targets = [f"{imported}.{n}" for n in names] if imported.count(".") <= 1 else [imported]
        for target in targets:
            b = part(target) if target.split(".")[1] not in BASE else "base"
            if a == b or b == "base" or a == "cli" or importer == "hub_export.__main__":
                continue
            if a == "base" or a == "model" or b == "cli" or (b != "model" and (a, b) not in ALLOWED):
                wrong.append(f"{importer} imports {target}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_no_module_imports_another_s_private_names():
    private = [f"{importer}: {imported}.{name}" for importer, imported, names in imports()
               for name in names if name.startswith("_")]
    assert not private, private


def test_the_benchmarks_and_tools_import_what_exists():
    """A module moved or renamed in the package is moved in `benchmarks/` and `tools/`
    too (they are not imported by any test: an import that no longer resolves would show
    only when someone re-measures)."""
    import importlib.util

    root = PACKAGE.parent
    missing = []
    for path in [*root.glob("benchmarks/*.py"), *root.glob("tools/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hub_export"):
                module = importlib.import_module(node.module)
                missing += [f"{path.relative_to(root)}: {node.module}.{a.name}"
                            for a in node.names if not hasattr(module, a.name) and
                            importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            elif isinstance(node, ast.Import):
                missing += [f"{path.relative_to(root)}: {a.name}" for a in node.names
                            if a.name.startswith("hub_export")
                            and importlib.util.find_spec(a.name) is None]
    assert not missing, "imports that no longer resolve:\n" + "\n".join(missing)


def test_error_classes_are_in_errors_py():
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases) and path.name != "errors.py":
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not elsewhere, f"error classes outside hub_export/errors.py: {elsewhere}"
