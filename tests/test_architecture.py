"""Layering: the engine never imports the widget stack, the package imports it lazily, and the explorer reaches the
engine through one adapter and its public names only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("module", ["tracin_widgets.influence", "tracin_widgets"])
def test_import_does_not_pull_widget_stack(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in ('anywidget', 'ipywidgets', 'traitlets') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} imported: {out.stdout.strip()}"


# --- the explorer's one door into the engine --------------------------------------------------------------------------
WIDGET = Path(__file__).resolve().parents[1] / "tracin_widgets" / "widget"
ENGINE = "tracin_widgets.influence"


def engine_imports(source: str, module: str) -> list[tuple[str, str]]:
    """``(imported module, name)`` for every import of the engine in ``source``, the code of widget module
    ``module`` (relative imports resolved against it); ``name`` is ``""`` for ``import tracin_widgets.influence...``."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name == ENGINE or a.name.startswith(ENGINE + ".")]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            if target == ENGINE or target.startswith(ENGINE + "."):
                found += [(target, a.name) for a in node.names]
            elif target == "tracin_widgets" and any(a.name == "influence" for a in node.names):
                found.append((ENGINE, ""))
    return found


def boundary_problems(modules: dict[str, str]) -> list[str]:
    """What breaks the rule: only ``_engine.py`` imports the engine, and only names of its public ``__all__``."""
    import tracin_widgets.influence as engine

    problems = []
    for module, source in sorted(modules.items()):
        for target, name in engine_imports(source, module):
            if not module.endswith("._engine"):
                problems.append(f"{module} imports {target} {name}".rstrip())
            elif target != ENGINE or name not in engine.__all__:
                problems.append(f"{module} imports the private {target}.{name or '*'}")
    return problems


def test_only_the_adapter_imports_the_engine_and_only_its_public_names():
    modules = {f"tracin_widgets.widget.{p.stem}": p.read_text(encoding="utf-8") for p in sorted(WIDGET.glob("*.py"))}
    assert "tracin_widgets.widget._engine" in modules and len(modules) > 10
    assert boundary_problems(modules) == []
    assert engine_imports(modules["tracin_widgets.widget._engine"], "tracin_widgets.widget._engine")  # not vacuous


def test_the_boundary_check_finds_each_kind_of_leak():
    leaks = {
        "tracin_widgets.widget._pipeline": "from ..influence import TracInCPFast\n",
        "tracin_widgets.widget._data": "from ..influence._model import model_lock\nimport tracin_widgets.influence\n",
        "tracin_widgets.widget._tasks": "from tracin_widgets import influence\n",
        "tracin_widgets.widget._engine": (
            "from ..influence import predict\nfrom ..influence._data import usable_cores\n"
        ),
    }
    assert boundary_problems(leaks) == [
        "tracin_widgets.widget._data imports tracin_widgets.influence._model model_lock",
        "tracin_widgets.widget._data imports tracin_widgets.influence",
        "tracin_widgets.widget._engine imports the private tracin_widgets.influence._data.usable_cores",
        "tracin_widgets.widget._pipeline imports tracin_widgets.influence TracInCPFast",
        "tracin_widgets.widget._tasks imports tracin_widgets.influence",
    ]


MAX_MODULE_LINES = 500


def long_modules(root: Path) -> list[str]:
    """The modules of the package and of the widget's JS over ``MAX_MODULE_LINES`` (one job per module)."""
    files = [*sorted((root / "tracin_widgets").rglob("*.py")), *sorted((root / "js" / "src").rglob("*.js"))]
    sizes = {f.relative_to(root).as_posix(): len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    return [f"{name} ({n} lines)" for name, n in sizes.items() if n > MAX_MODULE_LINES]


def test_every_module_is_at_most_500_lines(tmp_path):
    root = Path(__file__).resolve().parent.parent
    assert long_modules(root) == []
    (tmp_path / "tracin_widgets").mkdir()
    (tmp_path / "js" / "src").mkdir(parents=True)
    (tmp_path / "tracin_widgets" / "big.py").write_text("x = 1\n" * 501)
    (tmp_path / "js" / "src" / "ok.js").write_text("let x;\n" * 500)
    assert long_modules(tmp_path) == ["tracin_widgets/big.py (501 lines)"]
