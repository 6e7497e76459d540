"""The project's promises about itself: dependencies, imports, README, CI entry."""
import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {"torch", "safetensors", "einops", "pillow", "numpy", "huggingface-hub"}
# What runtime code may import: the six runtime packages (by module name) and the stdlib.
ALLOWED_MODULES = {"torch", "safetensors", "einops", "PIL", "numpy", "huggingface_hub"}


def _names(lines):
    return {re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower()
            for line in lines if line.strip() and not line.startswith("#")}


def test_requirements_and_pyproject_agree_on_exactly_the_runtime_set():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    req = (ROOT / "requirements.txt").read_text().splitlines()
    assert _names(req) == RUNTIME
    assert _names(project["dependencies"]) == RUNTIME
    assert sorted(req) == sorted(project["dependencies"]), "keep requirements.txt and pyproject in step"
    test_only = _names(project["optional-dependencies"]["test"])
    assert {"transformers", "tokenizers", "diffusers", "pytest"} <= test_only
    assert not test_only & RUNTIME


def test_comfy_registry_fields():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "dependencies", "urls"):
        assert key in project
    assert "Repository" in project["urls"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy[key]


def test_uni1_core_imports_only_runtime_dependencies_and_never_comfy():
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for path in sorted((ROOT / "uni1_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top not in stdlib and top not in ALLOWED_MODULES:
                    offenders.append(f"{path.relative_to(ROOT)}: {mod}")
    assert not offenders, "runtime code imports outside the six dependencies:\n" + "\n".join(offenders)


def test_readme_starts_with_make_demo_and_make_test():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(make \w+)", text, flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_ci_calls_make_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)


def test_never_unpickles_untrusted_data():
    """Every torch.load in the code base passes weights_only=True; no pickle module at run time."""
    for path in list((ROOT / "uni1_core").rglob("*.py")) + list((ROOT / "nodes").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(getattr(node.func, "value", None), "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path.relative_to(ROOT)}:{node.lineno}: torch.load without weights_only=True"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "pickle" not in names, f"{path.relative_to(ROOT)} imports pickle"
