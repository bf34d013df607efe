"""Every setting the product reads is defined in config/settings.py from the environment, and every
environment variable config/settings.py reads is documented in .env.example.

The code base is read with `ast`: `settings.NAME`, `getattr(settings, "NAME", …)` and helpers that read the
setting named by their argument (`setting("NAME")` in notifications/providers/registry.py).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from django.conf import global_settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_FILE = ROOT / "config" / "settings.py"
ENV_EXAMPLE = ROOT / ".env.example"
#: The product's packages (tests, benchmarks and the provider sandboxes are not configured by operators).
PRODUCT_PACKAGES = ("config", "notifications", "campaigns", "preferences")
SETTING_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def product_modules() -> Iterator[Path]:
    for package in PRODUCT_PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _settings_aliases(tree: ast.Module) -> set[str]:
    """Local names bound to `django.conf.settings` in a module (`settings` unless imported under another)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "django.conf":
            aliases |= {alias.asname or alias.name for alias in node.names if alias.name == "settings"}
    return aliases


def _literal_name(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING_NAME.match(node.value):
        return node.value
    return None


def _is_getattr_on(call: ast.Call, aliases: set[str]) -> bool:
    return (
        isinstance(call.func, ast.Name)
        and call.func.id == "getattr"
        and len(call.args) >= 2
        and isinstance(call.args[0], ast.Name)
        and call.args[0].id in aliases
    )


def _wrappers(tree: ast.Module, aliases: set[str]) -> set[str]:
    """Functions that read the setting named by their first parameter: `def setting(name): return
    getattr(settings, name, ...)`, and functions that pass their first parameter on to one of those."""
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.args.args]
    wrappers: set[str] = set()
    changed = True
    while changed:
        changed = False
        for function in functions:
            if function.name in wrappers:
                continue
            param = function.args.args[0].arg
            for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
                if _is_getattr_on(call, aliases):
                    name_arg = call.args[1]
                elif isinstance(call.func, ast.Name) and call.func.id in wrappers and call.args:
                    name_arg = call.args[0]
                else:
                    continue
                if isinstance(name_arg, ast.Name) and name_arg.id == param:
                    wrappers.add(function.name)
                    changed = True
                    break
    return wrappers


def settings_read_in(path: Path) -> dict[str, int]:
    """Setting name → first line where the module reads it: `settings.NAME`, `getattr(settings,
    "NAME", …)`, and `helper("NAME")` for a helper that reads the setting named by its argument."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _settings_aliases(tree)
    if not aliases:
        return {}
    wrappers = _wrappers(tree, aliases)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            name = node.attr if SETTING_NAME.match(node.attr) else None
        elif isinstance(node, ast.Call) and _is_getattr_on(node, aliases):
            name = _literal_name(node.args[1])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in wrappers:
            name = _literal_name(node.args[0] if node.args else None)
        if name and name not in found:
            found[name] = node.lineno
    return found


def settings_read() -> dict[str, list[str]]:
    """Every setting the product reads → where (`path:line`)."""
    reads: dict[str, list[str]] = {}
    for path in product_modules():
        if path == SETTINGS_FILE:
            continue
        for name, line in settings_read_in(path).items():
            reads.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return reads


def _settings_tree() -> ast.Module:
    return ast.parse(SETTINGS_FILE.read_text(), filename=str(SETTINGS_FILE))


def settings_defined() -> set[str]:
    """The upper-case names config/settings.py assigns at module level."""
    names = set()
    for node in _settings_tree().body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names |= {t.id for t in targets if isinstance(t, ast.Name) and SETTING_NAME.match(t.id)}
    return names


def environment_variables_read() -> dict[str, int]:
    """Environment variable → line, for every `env("NAME", …)` / `env.int("NAME", …)` … in config/settings.py."""
    found: dict[str, int] = {}
    for node in ast.walk(_settings_tree()):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        is_env = (isinstance(func, ast.Name) and func.id == "env") or (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "env"
        )
        name = _literal_name(node.args[0]) if is_env else None
        if name:
            found.setdefault(name, node.lineno)
    return found


def documented_variables() -> set[str]:
    """Variables .env.example shows, set (`NAME=…`) or commented out (`# NAME=…`)."""
    pattern = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
    return set(pattern.findall(ENV_EXAMPLE.read_text()))


# --- the checks -----------------------------------------------------------------------------------

DJANGO_DEFAULTS = {name for name in dir(global_settings) if SETTING_NAME.match(name)}


def test_every_setting_the_code_reads_is_defined_in_config_settings() -> None:
    defined = settings_defined() | DJANGO_DEFAULTS
    missing = {name: where for name, where in settings_read().items() if name not in defined}
    assert not missing, "read in code but not defined in config/settings.py (define it from the environment):\n" + (
        "\n".join(f"  {name}: {', '.join(where)}" for name, where in sorted(missing.items()))
    )


def test_every_environment_variable_config_settings_reads_is_in_env_example() -> None:
    documented = documented_variables()
    missing = {name: line for name, line in environment_variables_read().items() if name not in documented}
    assert not missing, "read in config/settings.py but not documented in .env.example:\n" + (
        "\n".join(f"  {name} (config/settings.py:{line})" for name, line in sorted(missing.items()))
    )


def test_the_scanner_sees_every_form_of_reading_a_setting(tmp_path: Path) -> None:
    module = tmp_path / "reader.py"
    module.write_text(
        "from django.conf import settings as conf\n"
        "def setting(name):\n"
        "    return getattr(conf, name, None)\n"
        "def timeout(name):\n"
        "    return setting(name) or 1\n"
        "A = conf.ATTRIBUTE_READ\n"
        "B = getattr(conf, 'GETATTR_READ', 3)\n"
        "C = setting('HELPER_READ')\n"
        "D = timeout('NESTED_HELPER_READ')\n"
        "E = conf.configure\n"
    )
    assert settings_read_in(module) == {
        "ATTRIBUTE_READ": 6,
        "GETATTR_READ": 7,
        "HELPER_READ": 8,
        "NESTED_HELPER_READ": 9,
    }


def test_the_scanner_reads_the_real_settings_module() -> None:
    assert {"SECRET_KEY", "REDIS_URL", "ANYMAIL"} <= settings_defined()
    assert {"DJANGO_SECRET_KEY", "REDIS_URL", "SENDGRID_API_KEY"} <= set(environment_variables_read())
    assert "REDIS_KEY_PREFIX" in settings_read()


def test_smtp_tls_and_ssl_together_stop_the_process_with_one_readable_line() -> None:
    """Django's SMTP backend refuses both at the first send, inside a worker; settings refuse them at start."""
    env = {**os.environ, "SMTP_USE_TLS": "1", "SMTP_USE_SSL": "1", "DJANGO_SETTINGS_MODULE": "config.settings"}
    proc = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "ImproperlyConfigured: SMTP_USE_TLS and SMTP_USE_SSL are exclusive" in proc.stderr.splitlines()[-1]
