"""The house rules of the layout: imcap_hub is the library users import; it never imports the
app's UI (gradio), training or the model card, so the Space and notebooks need neither."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_of_imcap_hub_imports_gradio_training_or_model_card():
    code = (
        "import importlib, pkgutil, sys, imcap_hub\n"
        "for m in pkgutil.iter_modules(imcap_hub.__path__):\n"
        "    importlib.import_module(f'imcap_hub.{m.name}')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'gradio', 'training', 'model_card'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
