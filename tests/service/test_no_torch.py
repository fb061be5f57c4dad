from __future__ import annotations

import subprocess
import sys

from tests.service.server import REPO_ROOT


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, service.app, service.__main__\n"
        "from service.settings import Settings\n"
        "service.app.create_app(Settings())\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "bad = roots & {'torch', 'torchvision', 'training'}\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
