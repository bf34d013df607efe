"""The product (config/, notifications/, campaigns/, preferences/) never imports the provider sandboxes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from provider_sandbox.process import REPO_ROOT

PRODUCT_PACKAGES = ("config", "notifications", "campaigns", "preferences")
SANDBOX_NAMES = ("provider_sandbox", "notifications.sandbox")


def _names_the_sandbox(name: str | None) -> bool:
    return bool(name) and any(name == sandbox or name.startswith(f"{sandbox}.") for sandbox in SANDBOX_NAMES)


def test_no_product_module_imports_or_names_the_sandbox() -> None:
    offenders = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value]  # dotted paths in settings, import_module("…")
                else:
                    continue
                offenders += [
                    f"{path.relative_to(REPO_ROOT)}:{node.lineno} {n}" for n in names if _names_the_sandbox(n)
                ]
    assert offenders == []


def test_settings_and_the_django_project_load_without_the_sandbox() -> None:
    script = (
        "import sys, django; django.setup(); import config.urls, config.wsgi; "
        "print(sorted(m for m in sys.modules if m.startswith(('provider_sandbox', 'notifications.sandbox'))))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
