"""Layering: the engine never imports the widget stack, and the package imports it lazily."""

import subprocess
import sys

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
