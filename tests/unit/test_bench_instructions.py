"""scripts/bench_instructions.py measures the build it is asked to measure, on both sides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def test_the_client_it_drives_imports_the_tree_on_pythonpath_first(tmp_path: Path) -> None:
    """With ``--compiled`` the PYTHONPATH's compiled tree comes before the checkout.

    The ``--drive`` process is this script run again; had it put the checkout first on
    ``sys.path``, the client side of a compiled measurement would run the sources instead.
    """
    shadow = tmp_path / "asap"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("WHERE = 'shadow'\n")
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['bench_instructions.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'bench_instructions.py')!r}, run_name='probe')\n"
        "finally:\n"
        "    import asap\n"
        "    print(getattr(asap, 'WHERE', asap.__file__))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.stdout.strip().splitlines()[-1] == "shadow", done.stderr
