"""The code's layering, read from the source: packages import downward only.

  core  <-  data_prep  <-  layers  <-  prototxt  <-  mtdnet  <-  tools      (tests on top)

No cycles, no production code importing tests, no module reaching into another
module's private names, and (outside the thin tools/) no imports of our own
packages hidden inside function bodies.
"""
import ast
import os

import pytest

from core import REPO_ROOT

ORDER = ("core", "data_prep", "layers", "prototxt", "mtdnet", "tools")
OURS = ORDER + ("tests",)


def modules(package):
    for dirpath, _, files in os.walk(os.path.join(REPO_ROOT, package)):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    yield os.path.relpath(path, REPO_ROOT), ast.parse(fh.read(), path)


def our_imports(tree):
    """(node, imported module, names) for every import of one of our packages."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in OURS:
            yield node, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in OURS:
                    yield node, a.name, []


@pytest.mark.parametrize("package", ORDER)
def test_packages_import_downward_only(package):
    allowed = set(ORDER[:ORDER.index(package) + 1])
    for path, tree in modules(package):
        for node, module, _ in our_imports(tree):
            top = module.split(".")[0]
            assert top in allowed, f"{path}:{node.lineno} imports {module}: {package} may import only " \
                                   f"{', '.join(sorted(allowed))}"


@pytest.mark.parametrize("package", ORDER)
def test_no_private_names_of_other_modules(package):
    for path, tree in modules(package):
        for node, module, names in our_imports(tree):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path}:{node.lineno} imports private {private} from {module}"
        imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module and node.module.split(".")[0] in OURS for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in imported and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                pytest.fail(f"{path}:{node.lineno} uses {node.value.id}.{node.attr}, another module's private name")


@pytest.mark.parametrize("package", ORDER[:-1])
def test_no_imports_of_ours_inside_functions(package):
    """Lazy imports of our own code were the workaround for cycles; the layering needs none
    (tools/ import lazily so that --help is fast)."""
    for path, tree in modules(package):
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node, module, _ in our_imports(fn):
                    pytest.fail(f"{path}:{node.lineno} imports {module} inside {fn.name}()")


def test_tools_are_thin():
    """Entry points parse options and call the library; the logic lives in the packages."""
    for path, tree in modules("tools"):
        body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        lines = sum(n.end_lineno - n.lineno + 1 for n in body)
        assert lines <= 80, f"{path}: {lines} lines of functions; move the logic into a package"


LIBRARY = ("core", "data_prep", "layers", "prototxt", "mtdnet")


@pytest.mark.parametrize("package", LIBRARY)
def test_the_library_never_runs_our_make_or_tools(package):
    """The library is called by the tools and the Makefile, never the other way round: a module
    that starts processes names neither `make` nor a `tools/` script as a command word."""
    for path, tree in modules(package):
        if not any(module == "subprocess" for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for module in (a.name for a in node.names)):
            continue
        words = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and (n.value == "make" or n.value.startswith("tools/"))]
        assert not words, f"{path}:{words[0].lineno}: runs {words[0].value!r} (call the library instead)"


@pytest.mark.parametrize("cls", ["core.datasets:DatasetSpec", "core.variants:Variant", "core.profiles:Profile"])
def test_every_registry_field_is_read_by_some_code(cls):
    """A field of a registry entry that no production code reads is a setting that does nothing."""
    import dataclasses
    import importlib
    module, _, name = cls.partition(":")
    fields = [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))]
    reads = set()
    for package in LIBRARY + ("tools",):
        for _, tree in modules(package):
            reads |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            # getattr(obj, "field"), and d["field"] of its dataclasses.asdict
            reads |= {n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Name) and n.func.id == "getattr" and len(n.args) > 1
                      and isinstance(n.args[1], ast.Constant)}
            reads |= {n.slice.value for n in ast.walk(tree) if isinstance(n, ast.Subscript)
                      and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str)}
    unread = [f for f in fields if f not in reads]
    assert not unread, f"{cls}: no code reads {unread}"
