"""Extension lint without Slicer: what a Slicer build, the Extensions Index or its reviewers would reject.

CMake lists <-> files on disk, extension metadata, the .ui <-> code widget names, icon sizes,
file-scope imports of the module file, class-name conventions, Python 3.11 grammar.
"""

from __future__ import annotations

import ast
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = "WSPCirrhosis"
MODULE_DIR = ROOT / MODULE
LIB_DIR = MODULE_DIR / f"{MODULE}Lib"
MODULE_FILE = MODULE_DIR / f"{MODULE}.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / f"{MODULE}.ui"
RAW_PREFIX = "https://raw.githubusercontent.com/wspcirrhosis/SlicerWSPCirrhosis/main/"
# scripts/check_description_files.py of Slicer/ExtensionsIndex (subset that matters here)
ACCEPTED_CATEGORIES = {"Segmentation", "Quantification", "Analysis", "Utilities", "Examples", "Informatics",
                       "Filtering", "Registration", "Radiotherapy", "Cardiac", "DICOM"}
FILE_SCOPE_ALLOWED = set(sys.stdlib_module_names) | {"slicer", "vtk", "qt", "ctk"}
QT_FREE_LIB = ("nodes.py", "outputs.py", "analysis.py", "process.py", "job.py", "panel.py")  # run on a bare slicer-core scene


def cmake_text(path: Path) -> str:
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def cmake_list(text: str, name: str) -> list[str]:
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.S)
    assert match, f"set({name} ...) not found"
    return [item.replace("${MODULE_NAME}", MODULE) for item in match.group(1).split()]


def cmake_set(text: str, name: str) -> str:
    match = re.search(rf'set\(\s*{name}\s+"([^"]*)"\s*\)', text)
    assert match, f'set({name} "...") not found'
    return match.group(1)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 11))


def all_imports(tree: ast.Module) -> list[str]:
    """Top-level names of every module imported anywhere in the file, function bodies included."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module.split(".")[0])
    return names


def top_level_imports(tree: ast.Module) -> list[str]:
    """Module names imported at file scope (under if/try too), never inside functions or classes."""
    names, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." if node.level else node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


# --- CMake ----------------------------------------------------------------------------------


def test_every_listed_module_file_exists_and_every_python_file_is_listed():
    text = cmake_text(MODULE_DIR / "CMakeLists.txt")
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    missing = [p for p in scripts + resources if not (MODULE_DIR / p).is_file()]
    assert not missing, f"listed in {MODULE}/CMakeLists.txt but absent (the Slicer build would fail): {missing}"
    on_disk = sorted(str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(scripts) == on_disk, "every .py of the module must be in MODULE_PYTHON_SCRIPTS (else not packaged)"
    assert {"Resources/Icons/WSPCirrhosis.png", "Resources/UI/WSPCirrhosis.ui", "Resources/requirements.txt"} <= set(resources)
    assert re.search(r"slicerMacroBuildScriptedModule\(.*?WITH_GENERIC_TESTS.*?\)", text, re.S)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert "add_subdirectory(Testing)" in text
    assert "add_subdirectory(Python)" in cmake_text(MODULE_DIR / "Testing" / "CMakeLists.txt")
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_bundled_model_folder_is_globbed_where_the_logic_looks():
    sys.path.insert(0, str(MODULE_DIR))
    from WSPCirrhosisLib import analysis

    text = cmake_text(MODULE_DIR / "CMakeLists.txt")
    relative = "/".join(analysis.DEFAULT_MODEL_SUBDIR)
    assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/{relative}/*" in text, "CMake must package the folder the logic loads"
    assert analysis.defaultModelPath() == MODULE_DIR / relative
    assert re.search(r"if\(_model_files\)\s+list\(APPEND MODULE_PYTHON_RESOURCES \$\{_model_files\}\)", text), \
        "without a bundle the configure step must still succeed"
    folder = analysis.defaultModelPath()
    if folder.exists():  # produced by `wsp-cirrhosis export`: must be a loadable bundle, and small
        assert (folder / "bundle.json").is_file() and (folder / "model.pt").is_file()
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 50e6, f"bundled model is {size / 1e6:.0f} MB; the Index caps the repository at 100 MB"


def test_trainer_package_is_shipped_from_the_repository():
    text = cmake_text(MODULE_DIR / "CMakeLists.txt")
    default = re.search(r'set\(WSPCirrhosis_TRAINER_DIR\s+"([^"]+)"', text).group(1)
    trainer = Path(default.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(MODULE_DIR))).resolve()
    assert (trainer / "wsp_cirrhosis" / "__init__.py").is_file()
    assert "${WSPCirrhosis_TRAINER_DIR}/wsp_cirrhosis/*.py" in text
    assert re.search(r"ctkMacroCompilePythonScript\(.*?SOURCE_DIR \$\{WSPCirrhosis_TRAINER_DIR\}.*?"
                     r"DESTINATION_DIR \$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}", text, re.S)


def test_extension_metadata_is_complete():
    text = cmake_text(ROOT / "CMakeLists.txt")
    assert re.search(r"^project\(\s*WSPCirrhosis\s*\)", text, re.M)
    for name in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert cmake_set(text, f"EXTENSION_{name}").strip(), f"EXTENSION_{name} is empty"
    assert cmake_set(text, "EXTENSION_CATEGORY") in ACCEPTED_CATEGORIES
    assert cmake_set(text, "EXTENSION_DEPENDS") == "PyTorch"
    assert cmake_set(text, "EXTENSION_HOMEPAGE").rstrip("/").split("/")[-1].startswith("Slicer")
    assert not "WSPCirrhosis".startswith("Slicer")
    urls = [cmake_set(text, "EXTENSION_ICONURL")] + cmake_set(text, "EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        assert url.startswith(RAW_PREFIX), f"{url}: use a raw.githubusercontent.com URL of the main branch"
        assert (ROOT / url[len(RAW_PREFIX):]).is_file(), f"{url}: no such file in the repository"
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "add_subdirectory(WSPCirrhosis)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)
    assert "## NEXT_MODULE" in (ROOT / "CMakeLists.txt").read_text()


# Schema v1.0.1 of the Extensions Index catalog entry (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json)
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_KEYS = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory", "enabled", "tier"}
CONTRIBUTOR = r"[^(),]+ \([^()]+\)"  # "Name (Organization)", as the Index asks


def test_catalog_entry_matches_the_index_schema_and_cmake():
    raw = (ROOT / f"{MODULE}.json").read_bytes()
    assert b"\r" not in raw, "the Index requires LF line endings"
    import json

    entry = json.loads(raw)
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_KEYS, f"keys outside schema v1.0.1: {set(entry) - CATALOG_KEYS}"
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    text = cmake_text(ROOT / "CMakeLists.txt")
    assert entry["category"] == cmake_set(text, "EXTENSION_CATEGORY") and entry["category"] in ACCEPTED_CATEGORIES
    assert entry["build_dependencies"] == cmake_set(text, "EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert entry["scm_url"].startswith("https://github.com/") and entry["scm_url"].split("/")[-1].startswith("Slicer")
    assert entry["scm_url"] == cmake_set(text, "EXTENSION_HOMEPAGE") and entry["scm_revision"] == "main"


def test_contributors_are_name_and_organization():
    contributors = cmake_set(cmake_text(ROOT / "CMakeLists.txt"), "EXTENSION_CONTRIBUTORS")
    assert re.fullmatch(rf"{CONTRIBUTOR}(, {CONTRIBUTOR})*", contributors), contributors
    module = re.search(r"self\.parent\.contributors = (\[.*?\])", MODULE_FILE.read_text()).group(1)
    assert ast.literal_eval(module) == contributors.split(", ")


def test_license_and_requirements():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    from packaging.requirements import Requirement

    lines = [ln.split("#")[0].strip() for ln in (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()]
    names = {Requirement(ln).name.lower() for ln in lines if ln}
    assert "torch" not in names and "torchvision" not in names, "PyTorch comes from the PyTorch extension"


# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ROOT / "WSPCirrhosis.png", MODULE_DIR / "Resources" / "Icons" / "WSPCirrhosis.png"],
                         ids=["extension-icon", "module-icon"])
def test_icons_are_128_pixel_pngs(path):
    assert png_size(path) == (128, 128)


def test_screenshot_is_a_png():
    width, height = png_size(ROOT / "Resources" / "Screenshot01.png")
    assert width >= 600 and height >= 400


# --- .ui <-> code ---------------------------------------------------------------------------


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_ui_parses_and_has_every_widget_the_code_uses():
    widgets = ui_widgets()
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == MODULE
    used = set()
    for path in [MODULE_FILE, *LIB_DIR.glob("*.py")]:
        used |= set(re.findall(r"self\.ui\.(\w+)", path.read_text()))
    assert used, "the widget uses self.ui.<name>"
    assert not used - set(widgets), f"used in code but absent from the .ui: {sorted(used - set(widgets))}"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {name for name, w in widgets.items() if w.get("class", "").startswith("qMRML") and name != MODULE}
    assert mrml <= receivers, f"MRML widgets without the scene connection: {sorted(mrml - receivers)}"


def test_every_slicer_parameter_name_is_a_parameter_node_field():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    fields = {node.target.id for node in classes(parse(MODULE_FILE))[f"{MODULE}ParameterNode"].body
              if isinstance(node, ast.AnnAssign)}
    assert bound and not set(bound.values()) - fields, f"unknown parameters: {set(bound.values()) - fields}"
    assert {"inputVolume", "liverMask", "device"} <= set(bound.values())


# --- module file ----------------------------------------------------------------------------


def test_module_file_imports_only_slicer_vtk_qt_ctk_and_stdlib_at_file_scope():
    names = set(top_level_imports(parse(MODULE_FILE)))
    assert names <= FILE_SCOPE_ALLOWED, f"file-scope imports not allowed: {sorted(names - FILE_SCOPE_ALLOWED)}"
    assert not names & {"torch", "wsp_cirrhosis", "numpy", "SimpleITK", f"{MODULE}Lib", "."}


def test_lib_never_imports_torch_or_the_trainer_at_file_scope():
    for path in LIB_DIR.glob("*.py"):
        names = set(top_level_imports(parse(path)))
        assert not names & {"torch", "wsp_cirrhosis", "PyTorchUtils"}, f"{path.name}: heavy import at file scope"
        if path.name in QT_FREE_LIB:
            assert not set(all_imports(parse(path))) & {"qt", "ctk"}, f"{path.name} must not import Qt, even lazily"


def test_module_file_runs_nothing_at_import():
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    for node in parse(MODULE_FILE).body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        assert isinstance(node, allowed) or is_docstring, f"line {node.lineno}: code runs at import"
    source = MODULE_FILE.read_text() + "".join(p.read_text() for p in LIB_DIR.glob("*.py"))
    assert not re.search(r"^\s*import imp\b|from imp import", source, re.M), "imp is gone in Python 3.12"
    assert not re.search(r"pip_install\([^)]*torch", source), "torch must come from the PyTorch extension"


def test_class_names_follow_the_scripted_module_convention():
    found = classes(parse(MODULE_FILE))
    bases = {name: [getattr(b, "id", getattr(b, "attr", None)) for b in node.bases] for name, node in found.items()}
    assert bases[MODULE] == ["ScriptedLoadableModule"]
    assert bases[f"{MODULE}Widget"][0] == "ScriptedLoadableModuleWidget"
    assert bases[f"{MODULE}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert bases[f"{MODULE}Test"] == ["ScriptedLoadableModuleTest"]
    assert [d.id for d in found[f"{MODULE}ParameterNode"].decorator_list] == ["parameterNodeWrapper"]
    methods = lambda cls: {n.name: n for n in found[cls].body if isinstance(n, ast.FunctionDef)}  # noqa: E731
    assert "runTest" in methods(f"{MODULE}Test")
    assert {"setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
            "initializeParameterNode", "setParameterNode", "onApplyButton"} <= set(methods(f"{MODULE}Widget"))
    process = methods(f"{MODULE}Logic")["process"]
    assert [a.arg for a in process.args.args[:3]] == ["self", "volumeNode", "liverNode"]
    assert "device" in [a.arg for a in process.args.args]


@pytest.mark.parametrize("path", sorted(MODULE_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(MODULE_DIR)))
def test_module_python_files_compile_under_python_3_11(path):
    compile(parse(path), str(path), "exec")


def test_widget_runs_the_model_in_a_process_and_shows_errors_without_a_none_detail():
    source = MODULE_FILE.read_text()
    widget = classes(parse(MODULE_FILE))[f"{MODULE}Widget"]
    body = {n.name: ast.get_source_segment(source, n) for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert "startProcess" in body["onApplyButton"] and "processInBackground" not in source
    assert body["onApplyButton"].index("self.run.starting") < body["onApplyButton"].index("self._cancel()"), \
        "clicks while the process starts are ignored before Apply may mean Cancel"
    assert ".abandon()" in body["cleanup"], "module reload / application exit must end the process"
    assert "panel.defaultInputVolume" in body["initializeParameterNode"]
    assert "panel.applyState" in body["_checkCanApply"]
    calls = re.findall(r"errorDisplay\((.*)\)", source)
    assert calls == ["*args, **kwargs"], "every error dialog goes through panel.errorDisplayArguments"
    assert "detailedText=None" not in source and "import threading" not in (LIB_DIR / "runner.py").read_text()


def test_files_stay_small():
    assert len(MODULE_FILE.read_text().splitlines()) <= 400
    for path in LIB_DIR.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, f"{path.name} is over 400 lines"
