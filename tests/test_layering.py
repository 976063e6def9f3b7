"""The import contracts of pyproject.toml ([tool.importlinter]) hold: layers, web frameworks only in
``eca_serve.api``, a batcher that knows nothing of models, torch-free serving modules."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert found, "lint-imports not found: install the dev extra (pip install -e .[dev])"
    return found


def test_import_contracts_hold() -> None:
    # This checkout first on the path: grimp analyses the eca_serve that `import eca_serve` finds.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([lint_imports(), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "BROKEN" not in result.stdout
