"""The import contract (pyproject.toml, [tool.importlinter]; `make lint` runs it) covers
every routes module and every module of the app, so a new one cannot slip past it."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["name"]: contract for contract in config["contracts"]}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _defines_router(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.Call) and getattr(node.func, "id", None) == "APIRouter"
        for node in ast.walk(tree)
    )


def test_every_module_that_defines_a_router_is_forbidden_to_the_rest() -> None:
    contract = _contracts()["Only app.main imports a routes module"]
    routers = {_module(path) for path in APP.rglob("*.py") if _defines_router(path)}
    assert routers, "no routes module found: the walk is broken"
    assert routers == set(contract["forbidden_modules"])  # type: ignore[arg-type]


def test_every_module_but_main_is_a_source_of_the_routes_contract() -> None:
    contract = _contracts()["Only app.main imports a routes module"]
    top = {
        _module(path if path.is_file() else path / "__init__.py")
        for path in APP.iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").exists()
    }
    assert top - {"app.main"} == set(contract["source_modules"])  # type: ignore[arg-type]


def test_no_module_of_the_app_imports_another_modules_private_name() -> None:
    """A leading underscore says "this module's own": what another module needs is made
    public where it lives (or moved to where both can reach it)."""
    borrowed = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
        for path in APP.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("app")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert borrowed == []
