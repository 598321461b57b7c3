"""Layering: the engine never imports the widget stack."""

import subprocess
import sys


def test_engine_import_does_not_pull_widget_stack():
    code = (
        "import sys, tracin_widgets.influence\n"
        "bad = sorted(m for m in ('anywidget', 'ipywidgets', 'traitlets') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import tracin_widgets.influence imported: {out.stdout.strip()}"


def test_package_import_is_lazy():
    code = (
        "import sys, tracin_widgets\n"
        "bad = sorted(m for m in ('anywidget', 'ipywidgets', 'traitlets') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import tracin_widgets imported: {out.stdout.strip()}"
