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


# ---------------------------------------------------------------------------------------------
# The house rules of issue 14: no import circle, self-contained docs, short functions

def _core_imports(path: Path) -> set[str]:
    """uni1_core modules that `path` imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uni1_core."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("uni1_core.")]
        else:
            continue
        found |= {n.split(".")[0] for n in names}
    return found


def test_no_import_cycle_among_uni1_core_modules():
    modules = {p.stem: p for p in (ROOT / "uni1_core").glob("*.py")}
    graph = {name: sorted(_core_imports(path) & modules.keys() - {name}) for name, path in modules.items()}
    state, cycles = {}, []

    def visit(name, stack):
        state[name] = "open"
        for dep in graph[name]:
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles among uni1_core modules:\n" + "\n".join(cycles)
    assert "movq" not in graph["checkpoint"] and "checkpoint" in graph["movq"]


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n    from uni1_core.c import h\n")
    assert _core_imports(tmp_path / "a.py") == {"b", "c"}


# Files of other branches that still point at the reference specs; each is rewritten when its
# branch is merged (issue 14), and this list must then shrink (the test says so).
SPEC_POINTERS_PENDING: set[str] = set()


def _tracked_files() -> list[str]:
    import subprocess
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        import pytest
        pytest.skip("not a git checkout")
    return out.splitlines()


def test_no_tracked_file_outside_tests_refers_to_the_reference_specs():
    """A clone has no ../shared/specs: what a reader needs is in docs/."""
    offenders = set()
    for name in _tracked_files():
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file() or path.suffix in {".png", ".jpg", ".safetensors"}:
            continue
        if "shared/" in path.read_text(encoding="utf-8", errors="replace"):
            offenders.add(name)
    assert offenders - SPEC_POINTERS_PENDING == set(), f"files pointing at shared/: {sorted(offenders)}"
    assert not SPEC_POINTERS_PENDING - offenders, \
        f"{sorted(SPEC_POINTERS_PENDING - offenders)} no longer refer to shared/: remove them from the list"


MAX_FUNCTION_LINES = 100
# Functions still over the limit on this branch, each split by another part of issue 14 or 16;
# remove an entry when its split lands (the test fails on a stale entry).
LONG_FUNCTIONS_PENDING: set[tuple[str, str]] = set()


def test_functions_fit_on_a_screen_or_two():
    long = set()
    for path in sorted((ROOT / "uni1_core").glob("*.py")) + sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.add((path.relative_to(ROOT).as_posix(), node.name))
    assert long <= LONG_FUNCTIONS_PENDING, f"functions over {MAX_FUNCTION_LINES} lines: {sorted(long - LONG_FUNCTIONS_PENDING)}"
    assert long == LONG_FUNCTIONS_PENDING, f"{sorted(LONG_FUNCTIONS_PENDING - long)} are short now: remove them"


def test_readme_starts_small_and_design_maps_every_module():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200
    design = (ROOT / "docs" / "design.md").read_text()
    unmapped = [p.name for p in sorted((ROOT / "uni1_core").glob("*.py")) + sorted((ROOT / "nodes").glob("*.py"))
                if p.name != "__main__.py" and f"`{p.name}`" not in design]
    assert not unmapped, f"docs/design.md's module map lacks {unmapped}"
    glossary = design[design.index("## Words"):]
    for word in ("stream", "window", "draft", "forced token", "header", "branch", "hit", "bonus"):
        assert f"| {word} |" in glossary, f"the glossary lacks {word!r}"
