"""Checks of the 3D Slicer extension's files that run without Slicer.

The ``slicer-core`` wheel gives MRML only (no ``qt``, no ``slicer.ScriptedLoadableModule``),
so the module files are checked statically (``ast``, XML, the CMake text), and the logic of
``XRayToCT.py`` runs on real MRML nodes with the GUI layer stubbed. What needs Slicer itself
(the widget, the .ui loading) runs in Slicer's self-tests (``XRayToCTTest``, the generic tests).
"""
from __future__ import annotations

import ast
import io
import json
import os
import py_compile
import re
import struct
import subprocess
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "XRayToCT"
LIB_DIR = MODULE_DIR / "XRayToCTLib"
TRAINING_DIR = ROOT / "XRayToCTTraining"
MODULE_PY = MODULE_DIR / "XRayToCT.py"
TRAINING_PY = TRAINING_DIR / "XRayToCTTraining.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "XRayToCT.ui"
TRAINING_UI_FILE = TRAINING_DIR / "Resources" / "UI" / "XRayToCTTraining.ui"
ICONS = [MODULE_DIR / "Resources" / "Icons" / "XRayToCT.png",
         TRAINING_DIR / "Resources" / "Icons" / "XRayToCTTraining.png"]

LIB_FILES = sorted(p for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# ---------------------------------------------------------------------------------------
# (a) the library imports no Qt, no CTK, no Slicer, no VTK GUI
# ---------------------------------------------------------------------------------------

_GUI_TOP_LEVEL = {"qt", "ctk", "PythonQt", "slicer", "vtk", "PyQt5", "PyQt6", "PySide2", "PySide6",
                  "tkinter"}
_VTK_GUI_PREFIXES = ("vtkRendering", "vtkInteraction", "vtkGUISupport", "vtkViews", "vtkWeb")


def _imported_names(tree: ast.Module):
    """(module name, line) of every absolute import, including ``importlib.import_module("x")``
    and ``__import__("x")`` with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                yield node.args[0].value, node.lineno


def _is_gui_import(name: str, allow_mrml: bool) -> bool:
    parts = name.split(".")
    top = parts[0]
    if top in ("slicer", "vtk"):
        # mrml.py may use Slicer's MRML classes (from Slicer or the slicer-core wheel) and vtk
        return not allow_mrml
    if top in _GUI_TOP_LEVEL:
        return True
    if top == "vtkmodules" and len(parts) > 1:
        sub = parts[1]
        return sub in ("qt", "tk", "wx", "gtk", "web", "all") or sub.startswith(_VTK_GUI_PREFIXES)
    return False


def test_library_files_found():
    assert (LIB_DIR / "__init__.py") in LIB_FILES
    assert (LIB_DIR / "geometry.py") in LIB_FILES


@pytest.mark.parametrize("path", LIB_FILES, ids=lambda p: str(p.relative_to(LIB_DIR)))
def test_library_imports_no_gui(path: Path):
    allow_mrml = path.name in ("mrml.py", "compare_view.py")  # MRML (slicer-core), never Qt
    bad = [f"line {line}: {name}" for name, line in _imported_names(_parse(path))
           if _is_gui_import(name, allow_mrml)]
    assert not bad, f"XRayToCTLib/{path.relative_to(LIB_DIR)} imports GUI/Slicer modules: {bad}"


def test_gui_import_rule():
    assert _is_gui_import("qt", False) and _is_gui_import("ctk", False)
    assert _is_gui_import("slicer.util", False) and not _is_gui_import("slicer", True)
    assert _is_gui_import("vtkmodules.vtkRenderingCore", False)
    assert not _is_gui_import("vtkmodules.vtkCommonCore", False)
    assert not _is_gui_import("numpy", False) and not _is_gui_import("torch", False)


# ---------------------------------------------------------------------------------------
# (b) the module files compile and define the expected classes
# ---------------------------------------------------------------------------------------

def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}


def _base_names(cls: ast.ClassDef) -> set[str]:
    return {ast.unparse(b).split(".")[-1] for b in cls.bases}


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the file is loaded: module scope, including if/try blocks and
    class bodies, excluding function bodies."""
    names: list[str] = []

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            else:
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [])
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body)

    visit(tree.body)
    return names


@pytest.mark.parametrize("path", [MODULE_PY, TRAINING_PY], ids=lambda p: p.name)
def test_module_file_compiles(path: Path, tmp_path: Path):
    py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)


@pytest.mark.parametrize("path", [MODULE_PY, TRAINING_PY], ids=lambda p: p.name)
def test_module_file_loads_without_torch(path: Path):
    """torch and the torch-dependent library parts are imported inside methods only, so the
    module loads before PyTorch is installed."""
    torch_free = {"XRayToCTLib", "XRayToCTLib.geometry", "XRayToCTLib.errors", "XRayToCTLib.progress",
                  "XRayToCTLib.mrml", "XRayToCTLib.mrml.mrml", "XRayToCTLib.errors.Cancelled",
                  "XRayToCTLib.errors.XRayToCTError", "XRayToCTLib.errors.InputError",
                  "XRayToCTLib.errors.TemplateUnavailable", "XRayToCTLib.constants",
                  "XRayToCTLib.constants.TEMPLATE_ENV", "XRayToCTLib.process", "XRayToCTLib.mrml_tasks"}
    for name in _module_level_imports(_parse(path)):
        assert name.split(".")[0] != "torch", f"{path.name} imports torch at load time"
        if name.startswith("XRayToCTLib"):
            assert name in torch_free, f"{path.name} imports {name} at load time"


def test_load_time_library_modules_are_torch_free():
    """The library modules the module files import at load time import no torch (nor
    anything that does) at their own load time."""
    for stem in ("geometry", "errors", "progress", "mrml", "process", "mrml_tasks"):
        for name in _module_level_imports(_parse(LIB_DIR / f"{stem}.py")):
            assert name.split(".")[0] not in ("torch", "monai"), f"XRayToCTLib/{stem}.py imports {name}"
    code = ("import sys; import XRayToCTLib.mrml, XRayToCTLib.geometry, XRayToCTLib.errors, XRayToCTLib.process, XRayToCTLib.mrml_tasks; "
            "print('torch' in sys.modules)")
    pytest.importorskip("slicer")
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "False"


def test_xraytoct_module_classes():
    classes = _classes(_parse(MODULE_PY))
    expected_bases = {
        "XRayToCT": {"ScriptedLoadableModule"},
        "XRayToCTParameterNode": set(),
        "XRayToCTWidget": {"ScriptedLoadableModuleWidget", "VTKObservationMixin"},
        "XRayToCTLogic": {"ScriptedLoadableModuleLogic"},
        "XRayToCTTest": {"ScriptedLoadableModuleTest"},
    }
    for name, bases in expected_bases.items():
        assert name in classes, f"XRayToCT.py lacks class {name}"
        assert bases <= _base_names(classes[name]), f"{name} must derive from {sorted(bases)}"

    decorators = [ast.unparse(d) for d in classes["XRayToCTParameterNode"].decorator_list]
    assert "parameterNodeWrapper" in decorators

    widget = _methods(classes["XRayToCTWidget"])
    for method in ("setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
                   "initializeParameterNode", "setParameterNode", "_checkCanApply", "onApplyButton",
                   "onSynthesizeDrrsButton", "onCancelButton", "onPollTask", "onCompareButton",
                   "onLoadModelFileButton", "refreshModelList"):
        assert method in widget, f"XRayToCTWidget lacks {method}"
    # every action that can fail shows its error to the user
    for method in ("onApplyButton", "onPollTask", "onCompareButton", "onSynthesizeDrrsButton",
                   "onLoadModelFileButton"):
        assert "tryWithErrorDisplay" in ast.unparse(widget[method]), method
    assert "UI/XRayToCT.ui" in ast.unparse(widget["setup"])
    # Apply starts a background task that a QTimer polls; Cancel cancels it
    assert "startReconstruction" in ast.unparse(widget["onApplyButton"])
    assert "QTimer" in ast.unparse(widget["setup"])
    assert ".cancel()" in ast.unparse(widget["onCancelButton"])

    logic = _methods(classes["XRayToCTLogic"])
    for method in ("getParameterNode", "synthesizeDrrs", "ensureDependencies", "reconstruct",
                   "startReconstruction", "compare", "modelCatalog", "loadSampleData", "deviceDescription"):
        assert method in logic, f"XRayToCTLogic lacks {method}"
    args = logic["synthesizeDrrs"].args
    assert [a.arg for a in args.args] == ["self", "ctVolumeNode", "apOutputNode", "lateralOutputNode",
                                          "pixels", "device", "modelName"]
    assert {"runTest", "test_SynthesizeDrrs", "test_WholeChain"} <= set(_methods(classes["XRayToCTTest"]))


def test_xraytoct_module_metadata():
    init = _methods(_classes(_parse(MODULE_PY))["XRayToCT"])["__init__"]
    text = ast.unparse(init)
    assert "'XRayToCT'" in text and "'Tomographic Reconstruction'" in text
    assert "synthetic" in text.lower() and "diagnosis" in text.lower()


def test_training_module_classes():
    tree = _parse(TRAINING_PY)
    classes = _classes(tree)
    for name in ("XRayToCTTraining", "XRayToCTTrainingWidget", "XRayToCTTrainingLogic",
                 "XRayToCTTrainingTest"):
        assert name in classes, f"XRayToCTTraining.py lacks class {name}"
    assert "run" in _methods(classes["XRayToCTTrainingLogic"])
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "main" in functions
    mains = [n for n in tree.body if isinstance(n, ast.If)
             and ast.unparse(n.test).replace('"', "'") == "__name__ == '__main__'"]
    assert mains, "XRayToCTTraining.py must run as a script"
    text = ast.unparse(classes["XRayToCTTraining"])
    assert "'XRayToCT Training'" in text and "'Tomographic Reconstruction'" in text


def _run_python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_training_module_imports_in_plain_python():
    """With the MRML-only slicer-core wheel (or no slicer at all) the file defines the logic
    and main, skips the GUI classes cleanly, and does not load torch."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('XRayToCTTraining', {str(TRAINING_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(m.IN_SLICER, hasattr(m, 'XRayToCTTrainingLogic'), hasattr(m, 'main'),\n"
        "      hasattr(m, 'XRayToCTTrainingWidget'), 'torch' in sys.modules)\n"
    )
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True", "False", "False"]


def test_xraytoct_module_import_is_guarded(tmp_path: Path):
    """Where qt / Slicer's GUI layer is missing, importing XRayToCT.py fails with one clear
    ImportError, before it imports the library or torch, and leaves nothing behind."""
    code = (
        "import importlib.util, os, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('XRayToCT', {str(MODULE_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec)\n"
        "try:\n"
        "    spec.loader.exec_module(m)\n"
        "except ImportError as e:\n"
        "    print('GUARD', str(e).splitlines()[0])\n"
        "new = set(sys.modules) - before\n"
        "print('LIB', any(n.startswith('XRayToCTLib') for n in new), 'torch' in sys.modules)\n"
        "print('FILES', sorted(os.listdir('.')))\n"
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    guard = next(line for line in lines if line.startswith("GUARD"))
    assert "3D Slicer module" in guard and "xraytoct" in guard
    assert "LIB False False" in lines
    assert "FILES []" in lines


needs_cli = pytest.mark.skipif(not (LIB_DIR / "cli.py").exists(), reason="XRayToCTLib/cli.py not written yet")


@needs_cli
def test_training_script_runs_the_shared_parser():
    proc = _run_python(str(TRAINING_PY.relative_to(ROOT)), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    # a leading "--" (to keep Slicer off the subcommand's options) is dropped
    proc = _run_python(str(TRAINING_PY.relative_to(ROOT)), "--", "--version")
    assert proc.returncode == 0, proc.stderr
    proc = _run_python(str(TRAINING_PY.relative_to(ROOT)), "no-such-subcommand")
    assert proc.returncode == 2


# ---------------------------------------------------------------------------------------
# (c) the .ui file: well-formed, and bound to the parameter node's fields
# ---------------------------------------------------------------------------------------

def _parameter_fields() -> dict[str, ast.expr]:
    cls = _classes(_parse(MODULE_PY))["XRayToCTParameterNode"]
    return {n.target.id: n.annotation for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _ui_widgets() -> list[ET.Element]:
    return list(ET.parse(UI_FILE).getroot().iter("widget"))


def _property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _bound_widgets() -> dict[str, ET.Element]:
    bound = {}
    for widget in _ui_widgets():
        prop = _property(widget, "SlicerParameterName")
        if prop is not None:
            name = prop.findtext("string")
            assert name not in bound, f"two widgets bound to {name}"
            bound[name] = widget
    return bound


def test_ui_is_well_formed():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "XRayToCT"
    names = [w.get("name") for w in _ui_widgets()]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_ui_parameter_names_are_parameter_node_fields():
    fields = _parameter_fields()
    bound = _bound_widgets()
    assert bound, "no widget carries a SlicerParameterName"
    unknown = sorted(set(bound) - set(fields))
    assert not unknown, f"SlicerParameterName(s) not in XRayToCTParameterNode: {unknown}"
    for name in ("ctVolume", "apVolume", "lateralVolume", "device", "outputVolume", "groundTruthVolume",
                 "differenceOpacity"):
        assert name in bound, f"no widget bound to {name}"


def test_ui_widgets_match_their_parameter_types():
    """The parameterNodeWrapper connects a QComboBox to a str only with a Choice annotation,
    a qMRMLNodeComboBox to a node type it lists, a QSpinBox to an int."""
    fields = _parameter_fields()
    for name, widget in _bound_widgets().items():
        annotation = ast.unparse(fields[name])
        cls = widget.get("class")
        if cls == "QComboBox":
            assert annotation.startswith("Annotated[") and "Choice(" in annotation, (name, annotation)
        elif cls == "qMRMLNodeComboBox":
            node_types = [s.text for s in _property(widget, "nodeTypes").iter("string")]
            assert annotation in node_types, (name, annotation, node_types)
        elif cls == "QSpinBox":
            assert annotation == "int" or annotation.startswith("Annotated[int"), (name, annotation)
        elif cls == "QCheckBox":
            assert annotation == "bool", (name, annotation)
        elif cls in ("ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox"):
            assert annotation == "float" or annotation.startswith("Annotated[float"), (name, annotation)
        else:
            pytest.fail(f"{name}: no parameterNodeWrapper connector for a {cls} is known to this test")


def test_ui_mrml_widgets_get_the_scene():
    root = ET.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == "XRayToCT"
                 and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml_widgets = {w.get("name") for w in _ui_widgets() if w.get("class", "").startswith("qMRML")
                    and w.get("class") != "qMRMLWidget"}
    assert mrml_widgets and mrml_widgets <= receivers, sorted(mrml_widgets - receivers)


def test_ui_names_used_by_the_widget_exist():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text(encoding="utf-8")))
    names = {w.get("name") for w in _ui_widgets()}
    assert used and used <= names, f"XRayToCT.py uses widgets the .ui lacks: {sorted(used - names)}"


def test_ui_buttons_start_disabled():
    """Apply, Compare and Synthesize wait for their inputs (the widget enables them)."""
    widgets = {w.get("name"): w for w in _ui_widgets()}
    for name in ("applyButton", "compareButton", "synthesizeDrrsButton"):
        assert _property(widgets[name], "enabled").findtext("bool") == "false", name


def test_ui_model_list_is_filled_by_the_widget():
    """The model combo box lists the catalog at run time, so it is not bound to a fixed
    Choice; the widget keeps modelName in the parameter node itself."""
    assert "modelName" in _parameter_fields()
    assert "modelName" not in _bound_widgets()
    text = MODULE_PY.read_text(encoding="utf-8")
    assert "modelCatalog()" in text and "self._parameterNode.modelName = " in text


# ---------------------------------------------------------------------------------------
# (d), (e) the CMake files
# ---------------------------------------------------------------------------------------

def _cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``(command, arguments)`` of a CMake file: comments dropped, quotes removed (enough
    for the plain files of a Slicer extension; no bracket arguments)."""
    text = path.read_text(encoding="utf-8")
    commands, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*\(").match(text, i)
        if not m:
            i += 1
            continue
        name = m.group(0).rstrip("( \t\n").lower()
        i = m.end()
        args, depth, token, quoted = [], 0, "", False
        while i < n:
            c = text[i]
            if quoted:
                if c == "\\" and i + 1 < n:
                    token += text[i + 1]
                    i += 2
                    continue
                if c == '"':
                    quoted = False
                    args.append(token)
                    token = ""
                else:
                    token += c
            elif c == '"':
                quoted = True
            elif c == "#":
                i = text.find("\n", i)
                continue
            elif c in " \t\r\n" or (c == ")" and depth == 0):
                if token:
                    args.append(token)
                    token = ""
                if c == ")":
                    i += 1
                    break
            else:
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                token += c
            i += 1
        commands.append((name, args))
    return commands


def _expand(args: list[str], variables: dict[str, list[str]]) -> list[str]:
    out = []
    for arg in args:
        whole = re.fullmatch(r"\$\{(\w+)\}", arg)
        if whole:
            out.extend(variables.get(whole.group(1), []))
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables.get(m.group(1), [])), arg))
    return out


def _glob(pattern: str, recurse: bool) -> list[Path]:
    directory, _, name = pattern.rpartition("/")
    base = Path(directory)
    found = base.rglob(name) if recurse else base.glob(name)
    return sorted(p for p in found if p.is_file())


def _evaluate(path: Path) -> tuple[dict[str, list[str]], list[tuple[str, list[str]]]]:
    """Variables after running the ``set``/``file(GLOB)``/``list(SORT)`` commands of a file,
    and the expanded commands."""
    variables = {"CMAKE_CURRENT_SOURCE_DIR": [str(path.parent)]}
    expanded = []
    for name, raw in _cmake_commands(path):
        args = _expand(raw, variables)
        if name == "set" and args:
            variables[args[0]] = args[1:]
        elif name == "file" and args and args[0] in ("GLOB", "GLOB_RECURSE"):
            rest, relative, patterns = args[2:], None, []
            while rest:
                word = rest.pop(0)
                if word == "RELATIVE":
                    relative = Path(rest.pop(0))
                elif word in ("CONFIGURE_DEPENDS", "FOLLOW_SYMLINKS"):
                    continue
                elif word == "LIST_DIRECTORIES":
                    rest.pop(0)
                else:
                    patterns.append(word)
            files = [f for p in patterns for f in _glob(p, args[0] == "GLOB_RECURSE")]
            variables[args[1]] = [f.relative_to(relative).as_posix() if relative else str(f)
                                  for f in files]
        elif name == "list" and args[:1] == ["SORT"]:
            variables[args[1]] = sorted(variables.get(args[1], []))
        expanded.append((name, args))
    return variables, expanded


def _scripted_module(path: Path) -> dict[str, list[str]]:
    _, commands = _evaluate(path)
    calls = [args for name, args in commands if name == "slicermacrobuildscriptedmodule"]
    assert len(calls) == 1, f"{path}: one slicerMacroBuildScriptedModule call expected"
    sections: dict[str, list[str]] = {}
    key = None
    for word in calls[0]:
        if word in ("NAME", "SCRIPTS", "RESOURCES"):
            key = word
            sections[key] = []
        elif word == "WITH_GENERIC_TESTS":
            sections[word] = []
            key = None
        elif key:
            sections[key].append(word)
    sections["_unittests"] = [" ".join(args) for name, args in commands
                              if name == "slicer_add_python_unittest"]
    return sections


@pytest.mark.parametrize("module_dir, name", [(MODULE_DIR, "XRayToCT"),
                                              (TRAINING_DIR, "XRayToCTTraining")])
def test_cmake_module_files_exist(module_dir: Path, name: str):
    module = _scripted_module(module_dir / "CMakeLists.txt")
    assert module["NAME"] == [name]
    assert f"{name}.py" in module["SCRIPTS"]
    assert "WITH_GENERIC_TESTS" in module
    assert module["_unittests"] == [f"SCRIPT {name}.py"]
    for entry in module["SCRIPTS"] + module["RESOURCES"]:
        assert (module_dir / entry).is_file(), f"{module_dir.name}/CMakeLists.txt lists missing {entry}"
    assert f"Resources/Icons/{name}.png" in module["RESOURCES"]
    assert f"Resources/UI/{name}.ui" in module["RESOURCES"]


def test_cmake_installs_the_whole_library():
    module = _scripted_module(MODULE_DIR / "CMakeLists.txt")
    listed = set(module["SCRIPTS"])
    library = {p.relative_to(MODULE_DIR).as_posix() for p in LIB_FILES}
    assert library <= listed, f"library files not installed: {sorted(library - listed)}"
    for required in ("__init__", "geometry", "errors", "progress"):
        assert f"XRayToCTLib/{required}.py" in listed
    assert "Resources/UI/XRayToCT.ui" in module["RESOURCES"]
    # the model catalog and every package it lists are installed where XRayToCTLib.models looks
    catalog = MODULE_DIR / "Resources" / "Models" / "models.json"
    if catalog.is_file():
        assert "Resources/Models/models.json" in module["RESOURCES"]
        entries = json.loads(catalog.read_text(encoding="utf-8")).get("models", [])
        for entry in entries:
            assert f"Resources/Models/{entry['file']}" in module["RESOURCES"], entry["file"]
        package_py = (LIB_DIR / "models" / "package.py").read_text(encoding="utf-8")
        assert 'parents[2] / "Resources" / "Models" / "models.json"' in package_py


def test_cmake_extension():
    variables, commands = _evaluate(ROOT / "CMakeLists.txt")
    names = [name for name, _ in commands]
    assert names[0] == "cmake_minimum_required"
    assert ("project", ["XRayToCT"]) in commands
    assert variables["EXTENSION_DEPENDS"] == ["PyTorch"]
    assert variables["EXTENSION_CATEGORY"] == ["Tomographic Reconstruction"]
    assert variables["EXTENSION_HOMEPAGE"] == ["https://github.com/xraytoct/SlicerXRayToCT"]
    for key in ("EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert variables.get(key), f"{key} is not set"
    description = " ".join(variables["EXTENSION_DESCRIPTION"]).lower()
    assert "synthetic" in description and "diagnosis" in description
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands

    raw = _cmake_commands(ROOT / "CMakeLists.txt")  # unexpanded: Slicer's variables are not set here

    def position(command):
        matches = [i for i, c in enumerate(raw) if c[0] == command[0] and c[1] == command[1]]
        assert matches, f"{command} missing from CMakeLists.txt"
        return matches[0]

    use = position(("include", ["${Slicer_USE_FILE}"]))
    generate = position(("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]))
    cpack = position(("include", ["${Slicer_EXTENSION_CPACK}"]))
    for subdirectory in ("XRayToCT", "XRayToCTTraining"):
        at = position(("add_subdirectory", [subdirectory]))
        assert use < at < generate, f"add_subdirectory({subdirectory}) must come after Slicer_USE_FILE"
        assert (ROOT / subdirectory / "CMakeLists.txt").is_file()
    assert generate < cpack


def test_cmake_reader():
    """The little CMake reader above understands the forms the files use."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "Lib" / "sub").mkdir(parents=True)
        for f in ("Lib/a.py", "Lib/sub/b.py", "Lib/c.txt"):
            (d / f).write_text("")
        (d / "CMakeLists.txt").write_text(
            '# comment (with parens)\nset(NAME Mod)\n'
            'file(GLOB_RECURSE LIBS RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} CONFIGURE_DEPENDS\n'
            '  ${CMAKE_CURRENT_SOURCE_DIR}/Lib/*.py)  # trailing\n'
            'set(S ${NAME}.py ${LIBS})\nset(D "a \\"quoted\\" (text)")\n')
        variables, _ = _evaluate(d / "CMakeLists.txt")
    assert variables["S"] == ["Mod.py", "Lib/a.py", "Lib/sub/b.py"]
    assert variables["D"] == ['a "quoted" (text)']


# ---------------------------------------------------------------------------------------
# (f) the icons
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ICONS, ids=lambda p: p.name)
def test_icon_is_a_128_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    assert len(data) < 20_000
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the library
        return
    with Image.open(path) as im:
        im.load()
        assert im.size == (128, 128)


# ---------------------------------------------------------------------------------------
# The logic of XRayToCT.py on real MRML nodes (slicer-core), with the GUI layer stubbed
# ---------------------------------------------------------------------------------------

def _stub_gui_layer(monkeypatch) -> None:
    """Stand-ins for what only Slicer has: ScriptedLoadableModule, the parameter node wrapper,
    i18n. The MRML classes and slicer.util come from the slicer-core wheel."""
    sl = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

        def setup(self):
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=0):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(sl, cls.__name__, cls)

    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    class _Validator:
        def __init__(self, *args):
            self.args = args

    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = type("Choice", (_Validator,), {})
    pnw.WithinRange = type("WithinRange", (_Validator,), {})

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    for name, module in (("slicer.ScriptedLoadableModule", sl), ("slicer.parameterNodeWrapper", pnw),
                         ("slicer.i18n", i18n), ("qt", types.ModuleType("qt"))):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def xraytoct(monkeypatch):
    """XRayToCT.py loaded outside Slicer (skips where the slicer-core wheel is missing)."""
    pytest.importorskip("vtk")
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the slicer-core wheel (MRML) is not installed")
    _stub_gui_layer(monkeypatch)
    import importlib.util
    spec = importlib.util.spec_from_file_location("_XRayToCT_under_test", MODULE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def scene():
    import slicer
    return slicer.vtkMRMLScene()


def _phantom_node(scene, volume, name="Phantom CT"):
    import numpy as np
    import slicer
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.asarray(volume.array, dtype=np.float32))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras()))
    return node


def test_logic_volume_round_trip(xraytoct, scene):
    import numpy as np
    import slicer
    from XRayToCTLib.geometry import Volume, rotation_matrix

    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(5, 6, 7)).astype(np.float32), (0.7, 0.8, 2.5),
                    (10.0, -20.0, 30.0), rotation_matrix((10, -20, 30)))
    node = _phantom_node(scene, volume)
    back = xraytoct.XRayToCTLogic.volumeFromNode(node)
    np.testing.assert_allclose(back.array, volume.array)
    np.testing.assert_allclose(back.index_to_lps(), volume.index_to_lps(), atol=1e-9)

    # a linear parent transform moves the volume in world coordinates
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, 0.0, -3.0)  # RAS
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = xraytoct.XRayToCTLogic.volumeFromNode(node)
    np.testing.assert_allclose(np.asarray(moved.origin) - np.asarray(volume.origin), (-5.0, 0.0, -3.0),
                               atol=1e-9)  # LPS


def test_logic_synthesize_drrs(xraytoct, scene):
    import numpy as np
    import slicer
    pytest.importorskip("torch")
    drr = pytest.importorskip("XRayToCTLib.drr")
    from XRayToCTLib.geometry import ProjectionGeometry
    from XRayToCTLib.phantom import head_phantom

    phantom = head_phantom(size=32, spacing=8.0, seed=0)
    ct = _phantom_node(scene, phantom)
    logic = xraytoct.XRayToCTLogic()
    nodes = logic.synthesizeDrrs(ct, pixels=32, device="cpu")
    assert set(nodes) == {"ap", "lateral"}
    expected = drr.DRR(drr.biplanar_geometry(phantom, pixels=32)).render(phantom, device="cpu")
    for view, node in nodes.items():
        assert node.GetScene() is scene and node.IsA("vtkMRMLScalarVolumeNode")
        array = slicer.util.arrayFromVolume(node)
        assert array.shape == (1, 32, 32)
        assert np.all(np.isfinite(array)) and array.max() > 0 and array.std() > 0
        np.testing.assert_allclose(array[0], expected[view].array, rtol=1e-5, atol=1e-6)
        assert node.GetAttribute(xraytoct.ATTRIBUTE_VIEW) == view
        geometry = ProjectionGeometry.from_dict(json.loads(node.GetAttribute(xraytoct.ATTRIBUTE_GEOMETRY)))
        assert geometry == expected[view].geometry
        row, col = geometry.pixel_spacing
        np.testing.assert_allclose(node.GetSpacing(), (col, row, 1.0))
        # pixel (row r, col c) sits at the detector pixel centre, in RAS
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(node))
        centers_lps = geometry.pixel_centers()
        for r, c in ((0, 0), (5, 17), (31, 31)):
            ras = ijk_to_ras @ np.array([c, r, 0, 1.0])
            np.testing.assert_allclose(ras[:3] * (-1, -1, 1), centers_lps[r, c], atol=1e-6)
        assert logic.isDrrOf(node, ct)
        assert node.GetDisplayNode() is not None
    assert nodes["ap"].GetName() != nodes["lateral"].GetName()

    # rendering again into the same nodes reuses them
    again = logic.synthesizeDrrs(ct, nodes["ap"], nodes["lateral"], pixels=16, device="cpu")
    assert again["ap"] is nodes["ap"] and again["lateral"] is nodes["lateral"]
    assert slicer.util.arrayFromVolume(nodes["ap"]).shape == (1, 16, 16)


def _ijk_to_ras(node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def test_logic_synthesize_drrs_needs_a_ct(xraytoct, scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError):
        xraytoct.XRayToCTLogic().synthesizeDrrs(empty)
    with pytest.raises(ValueError):
        xraytoct.XRayToCTLogic().synthesizeDrrs(None)


def test_logic_asks_before_installing(xraytoct, monkeypatch):
    """No download without a yes: missing packages are listed in one question; declining
    installs nothing; PyTorch goes through the PyTorch extension when it is there."""
    import slicer
    logic = xraytoct.XRayToCTLogic()
    missing = ["torch", "tqdm"]
    asked, installed, torch_installs = [], [], []
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "missingDependencies", staticmethod(lambda: list(missing)))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, **kw: asked.append(text) or answer[0], raising=False)

    def pip_install(requirements, **kw):
        installed.append(requirements)
        missing.clear()

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)

    answer = [False]
    assert logic.ensureDependencies() is False
    assert len(asked) == 1 and "torch>=2.2" in asked[0] and "tqdm" in asked[0]
    assert installed == []

    answer = [True]
    assert logic.ensureDependencies() is True
    assert installed == ["torch>=2.2 tqdm>=4.60"]

    # with the PyTorch extension: torch from PyTorchUtils (which asks itself), the rest from pip
    missing[:] = ["torch", "tqdm"]
    asked.clear()
    installed.clear()

    class FakePyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **kw):
            torch_installs.append((askConfirmation, torchVersionRequirement))
            missing.remove("torch")
            return types.ModuleType("torch")

    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(pytorchutils=object()), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils",
                        types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic))
    assert logic.ensureDependencies() is True
    assert torch_installs == [(True, ">=2.2")]
    assert len(asked) == 1 and "torch" not in asked[0] and installed == ["tqdm>=4.60"]

    # nothing missing: no question at all
    asked.clear()
    assert logic.ensureDependencies() is True and asked == []


def test_slicer_self_test_runs(xraytoct, scene, monkeypatch):
    """XRayToCTTest.runTest (the test Slicer runs) on the slicer-core scene."""
    import slicer
    pytest.importorskip("torch")
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    # here always the small random-weight package (a trained catalog model takes longer on
    # 2 CPU cores); in Slicer the self-test uses the smallest catalog model when there is one
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "smallestModel", lambda self: None)
    result = unittest.TextTestRunner(stream=io.StringIO()).run(xraytoct.XRayToCTTest())
    assert result.wasSuccessful(), result.errors + result.failures
    assert not result.skipped


@needs_cli
def test_training_self_test_runs(monkeypatch, scene):
    """XRayToCTTrainingTest.runTest with the GUI layer stubbed (qt and ctk as empty modules)."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the slicer-core wheel (MRML) is not installed")
    _stub_gui_layer(monkeypatch)
    for name in ("qt", "ctk"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    import importlib.util
    spec = importlib.util.spec_from_file_location("_XRayToCTTraining_under_test", TRAINING_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.IN_SLICER
    result = unittest.TextTestRunner(stream=io.StringIO()).run(module.XRayToCTTrainingTest())
    assert result.wasSuccessful(), result.errors + result.failures


# ---------------------------------------------------------------------------------------
# XRayToCTLogic: reconstruction into nodes, the background task, compare
# (a stand-in reconstructor replaces the model; the self-test above runs the real one)
# ---------------------------------------------------------------------------------------

class _StandInReconstructor:
    """Answers like inference.Reconstructor: the sCT is the CT itself (CT input) or a
    constant head on an 8^3 canonical grid (radiographs); reports progress."""

    def __init__(self, views=("ap", "lateral"), steps=5, delay=0.0):
        from XRayToCTLib.geometry import default_biplanar
        geometry = default_biplanar(pixels=8)
        self.spec = types.SimpleNamespace(name="stand-in", views=tuple(views),
                                          geometry={v: geometry[v].to_dict() for v in views})
        self.steps, self.delay, self.calls = steps, delay, []

    def _progress(self, progress):
        import time
        for step in range(self.steps + 1):
            if progress is not None:
                progress(step / self.steps, f"step {step}")
            time.sleep(self.delay)

    def _result(self, sct, drrs, kind):
        score = {"views": {v: {"ssim": 0.9, "psnr": 30.0} for v in self.spec.views},
                 "mean": {"ssim": 0.9, "psnr": 30.0}}
        return types.SimpleNamespace(sct=sct, drrs=drrs, consistency=score,
                                     info={"model": {"name": "stand-in"}, "device": "cpu", "time_s": 0.1,
                                           "space": kind, "input_kind": kind})

    def reconstruct(self, *, ct=None, views=None, register="auto", progress=None, refine=None):
        """The one request, with inference.Reconstructor.reconstruct's choices and errors."""
        from XRayToCTLib.errors import InputError
        self.refine_asked = refine
        if ct is not None and views:
            raise InputError(None, "both a CT and radiographs were given")
        if ct is None and not views:
            raise InputError(None, "nothing to reconstruct from")
        if ct is not None:
            return self.reconstruct_ct(ct, register=register, progress=progress)
        return self.reconstruct_views(views, progress=progress)

    def reconstruct_ct(self, ct, *, register=True, progress=None):
        import numpy as np
        from XRayToCTLib.geometry import Radiograph
        self.calls.append(("ct", register))
        self._progress(progress)
        drrs = {v: Radiograph(np.full((8, 8), i + 1.0, np.float32), None,
                              __import__("XRayToCTLib.geometry", fromlist=["x"]).ProjectionGeometry.from_dict(g),
                              {"kind": "DRR", "view": v}) for i, (v, g) in enumerate(self.spec.geometry.items())}
        return self._result(ct.with_array(ct.array.copy()), drrs, "patient")

    def reconstruct_views(self, views, progress=None):
        import numpy as np
        from XRayToCTLib.geometry import Volume
        self.calls.append(("views", sorted(views)))
        self._progress(progress)
        return self._result(Volume(np.full((8, 8, 8), 40.0, np.float32), (32.0,) * 3, (-112.0,) * 3), {},
                            "canonical")


def _logic_with(xraytoct, monkeypatch, reconstructor):
    logic = xraytoct.XRayToCTLogic()
    monkeypatch.setattr(logic, "reconstructor", lambda name, device="auto", harmonize=None: reconstructor)
    monkeypatch.setattr(logic, "modelViews", lambda name: list(reconstructor.spec.views))
    return logic


def test_logic_reconstruct_from_a_ct(xraytoct, scene, monkeypatch):
    import numpy as np
    from XRayToCTLib import mrml
    from XRayToCTLib.phantom import head_phantom
    phantom = head_phantom(size=16, spacing=12.0, seed=0)
    ct = _phantom_node(scene, phantom, "Head")
    stand_in = _StandInReconstructor()
    logic = _logic_with(xraytoct, monkeypatch, stand_in)
    seen = []
    node = logic.reconstruct(None, None, modelName="stand-in", device="cpu", ctVolumeNode=ct, register=False,
                             progress=lambda f, m: seen.append(f))
    assert stand_in.calls == [("ct", False)] and seen[-1] == 1.0
    assert node.GetScene() is scene and node.GetName() == "Head sCT (synthetic)"
    assert node.GetAttribute(mrml.ATTRIBUTE_SYNTHETIC) == "true"
    assert node.GetAttribute(mrml.ATTRIBUTE_MODEL) == "stand-in"
    np.testing.assert_allclose(mrml.volume_from_node(node).index_to_lps(), phantom.index_to_lps(), atol=1e-9)
    # the DRRs the model saw are in two new nodes, linked to the CT
    inputs = [scene.GetNodeByID(i) for i in node.GetAttribute(mrml.ATTRIBUTE_INPUTS).split()]
    assert len(inputs) == 2 and all(logic.isDrrOf(n, ct) for n in inputs)
    assert logic.defaultGroundTruth(node) is ct
    summary = logic.consistencySummary(node)
    assert "SSIM 0.900" in summary and "30.0 dB" in summary
    # again, into the same output and DRR nodes
    again = logic.reconstruct(inputs[0], inputs[1], modelName="stand-in", ctVolumeNode=ct, outputVolumeNode=node,
                              register=False)
    assert again is node and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4


def test_logic_reconstruct_from_radiographs(xraytoct, scene, monkeypatch):
    import numpy as np
    from XRayToCTLib import mrml
    from XRayToCTLib.geometry import Radiograph
    ap = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "AP X-ray")
    lateral = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "LAT X-ray")
    for node, view in ((ap, "ap"), (lateral, "lateral")):
        mrml.update_node_from_radiograph(node, Radiograph(np.ones((10, 12), np.float32), (0.5, 0.5)), view)
    ct = _phantom_node(scene, __import__("XRayToCTLib.phantom", fromlist=["x"]).head_phantom(size=8, spacing=30.0))
    stand_in = _StandInReconstructor(views=("ap",))  # a single-view model takes the AP only
    logic = _logic_with(xraytoct, monkeypatch, stand_in)
    # real radiographs and a CT: refused, as on the command line, with this face's hint
    with pytest.raises(xraytoct.XRayToCTError, match="Clear the CT selector"):
        logic.reconstruct(ap, lateral, modelName="stand-in", ctVolumeNode=ct)
    assert stand_in.calls == []
    node = logic.reconstruct(ap, lateral, modelName="stand-in")
    assert stand_in.calls == [("views", ["ap"])]
    assert node.GetName() == "AP X-ray sCT (synthetic)"
    assert node.GetAttribute(mrml.ATTRIBUTE_SOURCE) == ""
    assert node.GetAttribute(mrml.ATTRIBUTE_INPUTS) == f"{ap.GetID()} {lateral.GetID()}"
    with pytest.raises(xraytoct.XRayToCTError):
        logic.reconstruct(None, None, modelName="stand-in")
    with pytest.raises(xraytoct.XRayToCTError, match="No model"):
        logic.reconstruct(ap, lateral, modelName="")


def test_logic_compare(xraytoct, scene, monkeypatch):
    import numpy as np
    pytest.importorskip("torch")
    pytest.importorskip("XRayToCTLib.metrics")
    from XRayToCTLib import mrml
    from XRayToCTLib.phantom import head_phantom
    slicer = pytest.importorskip("slicer")
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    phantom = head_phantom(size=32, spacing=8.0, seed=0)
    gt = _phantom_node(scene, phantom, "GT")
    sct = _phantom_node(scene, phantom.with_array(phantom.array + 20.0), "sCT")
    logic = xraytoct.XRayToCTLogic()
    result = logic.compare(sct, gt, opacity=0.4)
    rows = mrml.metrics_from_table(result["table"])
    assert rows == [{**r, "value": pytest.approx(r["value"])} for r in result["rows"]]
    values = {(r["metric"], r["window"], r["region"]): r["value"] for r in rows}
    assert set(values) == {(m, w, r) for m in ("ssim", "psnr", "cosine", "mae_hu")
                           for w in ("brain", "full") for r in ("head", "whole")}
    # a 20 HU offset, inside the full window's [-1000, 1000] HU clip
    clipped = np.clip(phantom.array + 20.0, -1000, 1000) - np.clip(phantom.array, -1000, 1000)
    assert values[("mae_hu", "full", "whole")] == pytest.approx(float(np.abs(clipped).mean()), rel=1e-4)
    np.testing.assert_allclose(mrml.volume_from_node(result["difference"]).array, 20.0, atol=1e-3)
    layout_node = logic.layoutNode(scene)
    assert layout_node.GetViewArrangement() == mrml.COMPARE_LAYOUT_ID
    composite = mrml.slice_composite_node(scene, mrml.COMPARE_VIEWS[("gt", "Axial")][0], create=False)
    assert composite.GetBackgroundVolumeID() == gt.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert "MAE " in logic.metricsSummary(rows) and "nan" not in logic.metricsSummary(rows)
    # again into the same nodes
    again = logic.compare(sct, gt, result["difference"], result["table"])
    assert again["difference"] is result["difference"] and again["table"] is result["table"]


def test_logic_sample_data(xraytoct, scene):
    """The shipped sample CT is the phantom ``xraytoct phantom --size 128 --spacing 2 --seed 0``
    makes (int16 HU), and loads without PyTorch."""
    import numpy as np
    from XRayToCTLib import mrml
    nodes = xraytoct.XRayToCTLogic().loadSampleData(scene, withDrrs=False)
    assert [n.GetName() for n in nodes] == [xraytoct.SAMPLE_NODE_NAME]
    volume = mrml.volume_from_node(nodes[0])
    assert volume.array.shape == (128, 128, 128) and volume.array.max() > 1000  # bone
    assert xraytoct.XRayToCTLogic.firstCtVolume(scene) is nodes[0]
    torch = pytest.importorskip("torch")
    from XRayToCTLib.phantom import head_phantom
    torch.set_num_threads(1)
    generated = head_phantom(size=128, spacing=2.0, seed=0)
    np.testing.assert_allclose(volume.index_to_lps(), generated.index_to_lps(), atol=1e-6)
    assert np.mean(np.abs(volume.array - np.round(generated.array))) < 1.0


# ---------------------------------------------------------------------------------------
# XRayToCTTraining: its panel's .ui, progress lines, background processes
# ---------------------------------------------------------------------------------------

def _load_training_plain():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_XRayToCTTraining_plain", TRAINING_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_ui_names_used_by_the_widget_exist():
    root = ET.parse(TRAINING_UI_FILE).getroot()
    assert root.tag == "ui" and root.find("widget").get("name") == "XRayToCTTraining"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names))
    used = set(re.findall(r"self\.ui\.(\w+)", TRAINING_PY.read_text(encoding="utf-8")))
    assert used and used <= set(names), sorted(used - set(names))
    assert "UI/XRayToCTTraining.ui" in TRAINING_PY.read_text(encoding="utf-8")


def test_training_progress_lines_round_trip(capsys):
    """In-process runs log the CLI's plain progress lines on stdout, one per percent, and the
    background process reads the same lines back (``XRayToCTLib.process.parse_progress``)."""
    from XRayToCTLib import cli
    from XRayToCTLib.process import parse_progress
    callback = cli._line_progress("train", step=0.01, stream=sys.stdout)
    for fraction, message in ((0.0, "start"), (0.004, "same percent"), (0.5, "epoch 5/10"), (1.0, "")):
        callback(fraction, message)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["train:   0% start", "train:  50% epoch 5/10", "train: 100%"]
    assert [parse_progress(line) for line in lines] == [(0.0, "start"), (0.5, "epoch 5/10"), (1.0, "")]
    assert parse_progress("error: something") is None


def test_training_report_path():
    m = _load_training_plain()
    assert m.reportPath(["evaluate", "--out", "runs/e1"]) == os.path.join("runs/e1", "report.html")
    assert m.reportPath(["evaluate", "--out=r.html"]) == "r.html"
    assert m.reportPath(["drr", "CT", "--out-dir", "d"]) == os.path.join("d", "report.html")
    assert m.reportPath(["models"]) is None


@needs_cli
def test_training_run_logs_progress_to_stdout(tmp_path, capsys):
    """Run in-process as the console would: the shared CLI's progress goes to stdout as
    progress lines (the CLI's tqdm hook is the one the logic replaces)."""
    m = _load_training_plain()
    from XRayToCTLib import cli
    assert callable(getattr(cli, "_tqdm_progress", None)), "the CLI's progress hook was renamed"
    original = cli._tqdm_progress
    logic = m.XRayToCTTrainingLogic()
    ct = tmp_path / "ct.nii.gz"
    assert logic.run(["phantom", "--out", str(ct), "--size", "24", "--spacing", "10"]) == 0
    status = logic.run(["preprocess", str(ct), "--out", str(tmp_path / "pre.nii.gz"), "--no-register",
                        "--size", "32", "--target-size", "16"])
    assert status == 0
    from XRayToCTLib.process import parse_progress
    lines = capsys.readouterr().out.splitlines()
    progress = [parse_progress(line) for line in lines if parse_progress(line)]
    assert progress and progress[-1][0] == 1.0 and any(line.startswith("preprocess:") for line in lines)
    assert cli._tqdm_progress is original  # restored


@needs_cli
def test_training_background_process(tmp_path):
    m = _load_training_plain()
    logic = m.XRayToCTTrainingLogic()
    process = logic.start(["--version"])
    assert process.wait(120) == 0 and process.done
    assert "xraytoct" in process.output and process.returncode == 0
    process = logic.start(["phantom", "--out", str(tmp_path / "x.nii.gz"), "--no-such-option"])
    assert process.wait(120) == 2
    assert any(line.startswith("error:") for line in process.new_lines())
    assert process.new_lines() == []  # each line is returned once
    # cancel stops a running command
    process = logic.start(["models"], log=str(tmp_path / "models.log"))
    process.cancel()
    process.wait(60)
    assert process.done and process.cancelled
    with pytest.raises(ValueError):
        logic.start([])


def test_sample_data_registration(xraytoct, scene, monkeypatch, tmp_path):
    """The sample is registered with arguments SampleData accepts, as a file source (not a
    custom downloader: ``SampleData.downloadSample`` ignores those and returns nothing). Done as
    SampleData does it (copy the URI into the cache, check the SHA-256, load the file as a
    volume node with the given name), it gives the phantom CT, without PyTorch."""
    import hashlib
    import urllib.request
    import slicer
    accepted = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                "thumbnailFileName", "loadFileType", "loadFiles", "loadFileProperties", "checksums"}
    calls = []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            assert set(kwargs) <= accepted, set(kwargs) - accepted
            calls.append(kwargs)

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    xraytoct.registerSampleData()
    assert len(calls) == 1
    source = calls[0]
    assert source["category"] == "XRayToCT" and source["sampleName"] == xraytoct.SAMPLE_NAME
    assert "customDownloader" not in source and source["loadFileType"] == "VolumeFile"
    assert len(source["uris"]) == len(source["fileNames"]) == len(source["nodeNames"]) == len(source["checksums"]) == 1
    assert Path(source["thumbnailFileName"]).is_file()
    cached = tmp_path / source["fileNames"][0]
    urllib.request.urlretrieve(source["uris"][0], cached)  # SampleDataLogic.downloadFile
    algo, digest = source["checksums"][0].split(":")
    assert algo == "SHA256" and hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(cached))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", source["nodeNames"][0])
    assert storage.ReadData(node)
    assert node.GetImageData().GetDimensions() == (128, 128, 128)
    assert node.GetImageData().GetScalarRange()[1] > 1000  # bone, in HU
    assert node.GetName() == xraytoct.SAMPLE_NODE_NAME


def test_parameter_node_fields_used_by_the_module_exist():
    """Every ``parameters.x`` / ``self._parameterNode.x`` the module reads or writes is a
    field of XRayToCTParameterNode (or a method of the wrapper)."""
    text = MODULE_PY.read_text(encoding="utf-8")
    used = set(re.findall(r"(?:\bparameters|self\._parameterNode)\.(\w+)", text))
    wrapper_methods = {"connectGui", "disconnectGui"}
    unknown = sorted(used - set(_parameter_fields()) - wrapper_methods)
    assert used and not unknown, f"XRayToCT.py uses parameters that XRayToCTParameterNode lacks: {unknown}"


# ---------------------------------------------------------------------------------------
# XRayToCTWidget driven through stand-ins for Qt: every action reaches the logic, the
# background task is polled to its end, and only widgets the .ui declares are used
# ---------------------------------------------------------------------------------------

class _FakeQtWidget:
    """Accepts the calls the widget makes on Qt widgets and records signal connections."""

    def __init__(self, name):
        self.name, self.connections, self.items, self.visible = name, {}, [], True
        self.enabled, self.text, self.toolTip, self.value, self.currentIndex = True, "", "", 0, -1

    def connect(self, signal, slot):
        self.connections[signal] = slot

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True

    def blockSignals(self, block):
        return False

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))

    def findData(self, data):
        return next((i for i, (_t, d) in enumerate(self.items) if d == data), -1)

    def itemData(self, index):
        return self.items[index][1]

    def setCurrentIndex(self, index):
        self.currentIndex = index
        if "currentIndexChanged(int)" in self.connections:
            self.emit("currentIndexChanged(int)", index)

    def setMRMLTableNode(self, node):
        self.tableNode = node

    def emit(self, signal, *args):
        """Call the connected slot as PythonQt does: with as many of the signal's arguments
        as the slot takes."""
        import inspect
        slot = self.connections[signal]
        parameters = inspect.signature(slot).parameters.values()
        if not any(p.kind == p.VAR_POSITIONAL for p in parameters):
            args = args[:len([p for p in parameters if p.default is p.empty])]
        return slot(*args)


def _ui_namespace(path):
    return types.SimpleNamespace(**{w.get("name"): _FakeQtWidget(w.get("name"))
                                    for w in ET.parse(path).getroot().iter("widget")})


def test_widget_actions_reach_the_logic(xraytoct, scene, monkeypatch, tmp_path):
    import contextlib
    import time
    import slicer
    pytest.importorskip("torch")
    pytest.importorskip("XRayToCTLib.metrics")
    from XRayToCTLib import mrml
    from XRayToCTLib.phantom import head_phantom

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    ui = _ui_namespace(UI_FILE)
    shown = []

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as e:
            shown.append(f"{message} {e}")
            raise

    class FakeTimer(_FakeQtWidget):
        def __init__(self):
            super().__init__("timer")
            self.active = False

        def setInterval(self, ms):
            self.interval = ms

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None, layoutManager=lambda: None),
                        raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: types.SimpleNamespace(setMRMLScene=lambda s: None))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", try_with_error_display)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(("layers", kw)))
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTimer=FakeTimer))
    monkeypatch.setattr(xraytoct, "qt", sys.modules["qt"])

    class ParameterNode:
        """The parameter node wrapper's behaviour the widget relies on: fields with defaults."""

        def __init__(self):
            for name in _parameter_fields():
                setattr(self, name, getattr(xraytoct.XRayToCTParameterNode, name, None))

        def connectGui(self, ui):
            return "tag"

        def disconnectGui(self, tag):
            pass

        def AddObserver(self, event, method, priority=0.0):
            return 1

        def RemoveObserver(self, tag):
            pass

    parameters = ParameterNode()
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "getParameterNode", lambda self: parameters)
    model = "cnn_inr_phantom64"  # the bundled 64^3 model: the background processes run it for real
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "modelCatalog", lambda self: [
        {"name": model, "title": "Tiny", "description": "A test model.", "views": ["ap", "lateral"],
         "output_size": 64, "trained_on": "nothing"}])
    from XRayToCTLib.models import package
    from test_pix2pix import META, tiny_pix2pix
    harmonizer = str(package.save_package(tiny_pix2pix(64), tmp_path / "tiny_pix2pix.safetensors", metadata=META))
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "harmonizerCatalog", lambda self: [
        {"name": harmonizer, "title": "Tiny harmoniser", "kind": "translation_2d"}])
    missing = ["torch"]  # first run: a package is missing, and the panel offers to install it
    installs = []
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "missingDependencies", staticmethod(lambda: list(missing)))
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "ensureDependencies",
                        lambda self, askConfirmation=True: installs.append(askConfirmation) or missing.clear() or True)

    ct = _phantom_node(scene, head_phantom(size=32, spacing=8.0, seed=0), "Head")
    widget = xraytoct.XRayToCTWidget(types.SimpleNamespace(isEntered=True))
    monkeypatch.setattr(widget, "layout", types.SimpleNamespace(addWidget=lambda w: None), raising=False)
    monkeypatch.setattr(widget, "resourcePath", lambda p: str(MODULE_DIR / "Resources" / p), raising=False)
    widget.setup()

    def run_task(seconds=180):
        deadline = time.time() + seconds
        while widget._task is not None and time.time() < deadline:
            widget._timer.emit("timeout()")
            time.sleep(0.05)
        assert widget._task is None, "the background task did not end"

    # without PyTorch the install control shows and works; then the models are listed
    assert ui.dependenciesGroupBox.visible and "torch" in ui.dependenciesLabel.text
    ui.installDependenciesButton.emit("clicked(bool)", True)
    assert installs == [True] and not ui.dependenciesGroupBox.visible

    # the catalog fills the model list; the CT is picked; Apply is possible
    assert ui.modelComboBox.items == [("Tiny", model)] and parameters.modelName == model
    assert "Trained on: nothing" in ui.modelDescriptionLabel.text
    assert parameters.ctVolume is ct and ui.applyButton.enabled and ui.synthesizeDrrsButton.enabled
    assert not ui.compareButton.enabled

    # Synthesize DRRs: a background process, its DRRs become the inputs
    ui.synthesizeDrrsButton.emit("clicked(bool)", True)
    assert widget._timer.active and not ui.applyButton.enabled  # busy
    run_task()
    assert xraytoct.XRayToCTLogic.isDrrOf(parameters.apVolume, ct)
    assert xraytoct.XRayToCTLogic.isDrrOf(parameters.lateralVolume, ct)
    assert "DRRs ready" in ui.statusLabel.text
    drrs = (parameters.apVolume, parameters.lateralVolume)

    # Simulate: realistic radiographs of the CT; Harmonize the checked view into the DRR domain
    assert ui.harmonizerComboBox.items == [("Tiny harmoniser", harmonizer)] and parameters.harmonizerName == harmonizer
    assert not ui.harmonizeButton.enabled  # DRRs need no harmonisation
    ui.simulateButton.emit("clicked(bool)", True)
    run_task()
    assert "Simulated radiographs" in ui.statusLabel.text
    simulated = [n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode") if "simulated" in n.GetName()]
    assert len(simulated) == 2
    parameters.apVolume = next(n for n in simulated if n.GetAttribute(mrml.ATTRIBUTE_VIEW) == "ap")
    parameters.harmonizeLateral = False
    widget._checkCanApply()
    assert ui.harmonizeButton.enabled
    ui.harmonizeButton.emit("clicked(bool)", True)
    run_task()
    assert parameters.apVolume.GetName() == "Head simulated AP harmonised" and parameters.lateralVolume is drrs[1]
    assert "Harmonised with" in ui.statusLabel.text
    parameters.apVolume, parameters.lateralVolume = drrs

    # Apply: a background process, polled by the timer, ends in an sCT node
    ui.applyButton.emit("clicked(bool)", True)
    assert widget._timer.active and ui.progressBar.visible and ui.cancelButton.visible
    assert not ui.applyButton.enabled  # busy
    run_task()
    assert not widget._timer.active and not ui.progressBar.visible
    sct = parameters.outputVolume
    assert sct is not None and sct.GetName() == "Head sCT (synthetic)"
    assert parameters.groundTruthVolume is ct
    assert re.search(r"SSIM 0\.\d{3}", ui.consistencyLabel.text), ui.consistencyLabel.text
    assert "Head sCT (synthetic) is ready" in ui.statusLabel.text
    assert ui.compareButton.enabled and ui.applyButton.enabled

    # Compare: metrics table shown, difference node kept in the parameters
    ui.compareButton.emit("clicked(bool)", True)
    run_task()
    assert ui.metricsTableView.tableNode is parameters.metricsTable
    assert len(mrml.metrics_from_table(parameters.metricsTable)) == 16
    assert parameters.differenceVolume.GetAttribute(mrml.ATTRIBUTE_KIND) == mrml.KIND_DIFFERENCE
    assert "Inside the head" in ui.statusLabel.text
    ui.differenceOpacitySlider.emit("valueChanged(double)", 0.7)
    composite = mrml.slice_composite_node(scene, mrml.COMPARE_VIEWS[("sct", "Axial")][0], create=False)
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)

    # Apply then Cancel: the process is killed, no new sCT, the panel says so
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    parameters.outputVolume = None
    ui.applyButton.emit("clicked(bool)", True)
    task = widget._task
    ui.cancelButton.emit("clicked(bool)", True)
    run_task(30)
    assert task.process.returncode is not None and "Cancelled" in ui.statusLabel.text
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count

    # Apply, then the scene is closed: the run is cancelled cleanly, no error dialog
    ui.applyButton.emit("clicked(bool)", True)
    task = widget._task
    widget.onSceneStartClose(scene, None)
    assert widget._task is None and task.process.returncode is not None and not widget._timer.active
    assert "Cancelled" in ui.statusLabel.text
    assert shown == [("layers", {"background": sct, "fit": True})]  # and no error was shown
    widget.cleanup()


@needs_cli
def test_training_widget_runs_a_command(monkeypatch, scene, tmp_path):
    """The Training panel through stand-ins for Qt: Start runs the command in a background
    process, the timer follows it to its end, the log and the status say how it went, and the
    report button opens the command's report.html when there is one."""
    import time
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the slicer-core wheel (MRML) is not installed")
    _stub_gui_layer(monkeypatch)
    opened = []

    class FakeTimer(_FakeQtWidget):
        def __init__(self):
            super().__init__("timer")
            self.active = False

        def setInterval(self, ms):
            pass

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    class FakeLog(_FakeQtWidget):
        def setPlainText(self, text):
            self.text = text

        def appendPlainText(self, text):
            self.text += "\n" + text

    fake_qt = types.SimpleNamespace(
        QTimer=FakeTimer,
        QUrl=types.SimpleNamespace(fromLocalFile=lambda path: path),
        QDesktopServices=types.SimpleNamespace(openUrl=lambda url: opened.append(url)))
    monkeypatch.setitem(sys.modules, "qt", fake_qt)
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    import importlib.util
    spec = importlib.util.spec_from_file_location("_XRayToCTTraining_widget", TRAINING_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ui = _ui_namespace(TRAINING_UI_FILE)
    ui.logTextEdit = FakeLog("logTextEdit")
    ui.commandComboBox.currentText = ""
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: object())
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)

    import contextlib

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        yield

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", try_with_error_display)
    widget = module.XRayToCTTrainingWidget(None)
    widget.layout = types.SimpleNamespace(addWidget=lambda w: None)
    widget.resourcePath = lambda p: str(TRAINING_DIR / "Resources" / p)
    widget.setup()
    assert [text for text, _data in ui.commandComboBox.items] == list(module.PANEL_COMMANDS)
    assert not ui.cancelButton.enabled and not ui.openReportButton.enabled

    def run(command, arguments):
        ui.commandComboBox.currentText = command
        ui.argumentsLineEdit.text = arguments
        ui.startButton.emit("clicked(bool)", True)
        assert not ui.startButton.enabled and ui.cancelButton.enabled and widget.timer.active
        deadline = time.time() + 120
        while widget.process is not None and time.time() < deadline:
            widget.timer.emit("timeout()")
            time.sleep(0.05)
        assert widget.process is None and not widget.timer.active and ui.startButton.enabled

    out = tmp_path / "report"
    run("evaluate", f"--pred {tmp_path / 'none'} --gt {tmp_path / 'none'} --out {out}")
    assert "Stopped with status 2" in ui.statusLabel.text and "error" in ui.logTextEdit.text
    assert not ui.openReportButton.enabled
    out.mkdir(exist_ok=True)
    (out / "report.html").write_text("<html></html>")
    run("prepare", "--help")
    assert ui.statusLabel.text == "Finished." and "--phantoms" in ui.logTextEdit.text
    widget._lastArgv = ["evaluate", "--out", str(out)]
    ui.openReportButton.emit("clicked(bool)", True)
    assert opened == [str(out / "report.html")]
    widget.cleanup()
