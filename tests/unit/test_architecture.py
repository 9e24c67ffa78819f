"""
The import graph is the architecture: the formula's files import each other
at top level, the graph has no cycle, the pure core imports nothing of Salt
and runs without Salt's dunders, and no function grows past 80 lines.
"""

import ast

from tests.modules import REPO

# plain Python, no I/O and nothing of Salt: validation, planning, rendering, answers
PURE = ("model", "plan", "flow", "report", "diagram", "dom0", "vpn")
MAX_LINES = 80


def _files():
    return sorted(list((REPO / "_modules").glob("*.py")) + list((REPO / "_states").glob("*.py")))


def _node(path):
    return "%s/%s" % (path.parent.name, path.stem)


def _imports(path):
    """Every module name ``path`` imports (anywhere in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def graph():
    """``{file: {core file it imports}}`` over ``_modules/*.py`` and ``_states/*.py``."""
    core = {p.stem: _node(p) for p in (REPO / "_modules").glob("_qubes_firewall_*.py")}
    return {_node(p): {core[name] for name in _imports(p) if name in core} for p in _files()}


def _cycle(edges):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    # and the shells sit on top of it
    assert "_modules/_qubes_firewall_run" in edges["_modules/qubes_firewall"]
    assert "_modules/_qubes_firewall_run" in edges["_states/qubes_firewall"]
    assert not any(node in deps for deps in edges.values() for node in ("_modules/qubes_firewall",
                                                                        "_states/qubes_firewall"))


def test_a_cycle_is_found():  # the check above can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_pure_core_imports_no_salt_and_uses_no_dunders():
    for name in PURE:
        path = REPO / "_modules" / ("_qubes_firewall_%s.py" % name)
        text = path.read_text()
        assert not [m for m in _imports(path) if m == "salt" or m.startswith("salt.")], path
        imported = {m for m in _imports(path) if m.startswith("_qubes_firewall_")}
        assert imported <= {"_qubes_firewall_%s" % n for n in PURE}, (path, imported)
        for dunder in ("__salt__", "__opts__", "__pillar__", "__context__", "__grains__"):
            assert dunder not in text, (path, dunder)


def test_no_core_file_uses_salts_dunders():
    for path in (REPO / "_modules").glob("_qubes_firewall_*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"__salt__", "__opts__", "__pillar__", "__context__", "__grains__"}, path


def test_every_core_file_is_imported_by_something():
    edges = graph()
    used = set().union(*edges.values())
    core = {_node(p) for p in (REPO / "_modules").glob("_qubes_firewall_*.py")}
    assert core - used == set()


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append("%s:%d %s (%d lines)" % (path.relative_to(REPO), node.lineno, node.name, lines))
    assert long == []


def test_one_definition_of_each_constant():
    seen = {}
    for path in _files():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.isupper() and not target.id.startswith("_"):
                        seen.setdefault(target.id, []).append(_node(path))
    shared = ("DEFAULT_STATE_DIR", "DEFAULT_ETC_QUBES", "DEFAULT_SYSTEMD_DIR", "DEFAULT_RW_CONFIG",
              "DEFAULT_POLICY_FILE", "OWNED_PREFIX", "DEFAULT_DIR")
    assert {k: v for k, v in seen.items() if k in shared and len(v) > 1} == {}
    assert "DEFAULT_DIR" not in seen  # the backups' directory follows lookup:state_dir
