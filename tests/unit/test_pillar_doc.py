"""
docs/pillar.md against the pillar model: the key paths its tables list are
exactly the keys the model accepts (found by asking the model, through its
"unknown key (allowed keys: ...)" and "required" messages, not by copying its
lists), each once; "yes" in the required column exactly where the model
requires the key; every default written as a value is the model's default;
every example is YAML; `lookup` keys only in their own section; every
"since" is a release of this formula.
"""

import re

import pytest
import yaml

from tests.modules import REPO, load_file

DOC = REPO / "docs" / "pillar.md"
ROW = re.compile(r"^\| `(qubes_firewall:[^`]+)` \|(.*)\|\s*$")


def load_model():
    """The pure pillar model, under its flat name of either layout."""
    for name in ("_qubes_firewall_model", "qubes_firewall_model"):
        if (REPO / "_modules" / ("%s.py" % name)).exists():
            return load_file("_modules/%s.py" % name, "qf_pillar_doc_model")
    raise AssertionError("no pillar model in _modules/")


model = load_model()


def doc_rows():
    """[(key path, {column: cell}, section heading)] of every table row of docs/pillar.md."""
    rows, section, columns = [], None, None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("| key |"):
            columns = [c.strip() for c in line.strip("|").split("|")]
        match = ROW.match(line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == len(columns), line
            rows.append((match.group(1), dict(zip(columns, cells)), section))
    return rows


ROWS = doc_rows()
DOCUMENTED = {path: cells for path, cells, _ in ROWS}


def generic(path):
    """qubes_firewall:qubes:a:firewall:0:action -> qubes_firewall:qubes:<qube>:firewall:<n>:action"""
    path = re.sub(r":(qubes|addresses):a(?=:|$)", r":\1:<qube>", path)
    return re.sub(r":[0-9]+(?=:|$)", ":<n>", path)


BASE = {"qubes": {"a": {"netvm": None}, "b": {"netvm": "a"}}}
# one entry of every container the pillar has, for probing the model
CONTAINERS = {
    "qubes_firewall": lambda entry: dict(BASE, **entry),
    "qubes_firewall:lookup": lambda entry: dict(BASE, lookup=entry),
    "qubes_firewall:qubes:<qube>": lambda entry: {"qubes": {"a": entry}},
    "qubes_firewall:qubes:<qube>:firewall:<n>": lambda entry: {
        "qubes": {"a": {"netvm": None, "firewall": [entry]}}},
    "qubes_firewall:qubes:<qube>:vpn": lambda entry: {"qubes": {"a": {"netvm": None, "vpn": entry}}},
    "qubes_firewall:qubes:<qube>:vpn:endpoints:<n>": lambda entry: {"qubes": {"a": {"netvm": None, "vpn": {
        "interfaces": ["wg0"], "endpoints": [entry], "dns": "none"}}}},
    "qubes_firewall:connections:<n>": lambda entry: dict(BASE, connections=[entry]),
    "qubes_firewall:connect_tcp:<n>": lambda entry: dict(BASE, connect_tcp=[entry]),
    "qubes_firewall:port_forwards:<n>": lambda entry: dict(BASE, port_forwards=[entry]),
}


def allowed(container):
    """The keys the model accepts in ``container``, from its message for an unknown key."""
    errors = model.errors(CONTAINERS[container]({"zz_not_a_key": 1}))
    found = [re.search(r"\(allowed keys: ([^)]*)\)", e) for e in errors if "zz_not_a_key" in e]
    assert len(found) == 1 and found[0], errors
    return {"%s:%s" % (container, key) for key in found[0].group(1).split(", ")}


def required():
    """The key paths the model reports as required when a container is empty."""
    out = set()
    for container, build in CONTAINERS.items():
        pillar = {} if container == "qubes_firewall" else build({})
        for error in model.errors(pillar):
            match = re.match(r"(\S+): required\b", error)
            if match:
                out.add(generic(match.group(1)))
    return out


def model_keys():
    keys = set()
    for container in CONTAINERS:
        keys |= allowed(container)
    # mappings whose keys are qube names: the entry itself is the key documented
    free = {e.split(": ")[0] for e in model.errors(dict(BASE, addresses={"a": "not-an-address"}))}
    keys |= {generic(k) for k in free} | {"qubes_firewall:qubes:<qube>"}
    return keys


def model_defaults():
    """The model's value for each key left out, where it is a plain value."""
    out = {"qubes_firewall:lookup:%s" % f: getattr(model.Lookup(), f)
           for f in model.Lookup.__dataclass_fields__}
    parsed = model.parse(dict(BASE, connect_tcp=[{"client": "a", "server": "b", "port": 444}],
                              port_forwards=[{"name": "f", "qube": "b", "port": 443}]))
    qube = parsed.qubes["b"]
    out["qubes_firewall:qubes:<qube>:service"] = qube.service
    out["qubes_firewall:qubes:<qube>:custom_persist"] = qube.custom_persist
    tcp = parsed.connect_tcp[0]
    out["qubes_firewall:connect_tcp:<n>:persistent"] = tcp.persistent
    out["qubes_firewall:connect_tcp:<n>:call"] = tcp.call
    out["qubes_firewall:port_forwards:<n>:proto"] = parsed.port_forwards[0].proto
    vpn = model.parse({"qubes": {"a": {"netvm": None}, "b": {"netvm": "a", "vpn": {
        "interfaces": ["wg0"], "endpoints": [{"address": "198.51.100.7", "port": 1}], "dns": "none"}}}})
    out["qubes_firewall:qubes:<qube>:vpn:endpoints:<n>:protocol"] = vpn.qubes["b"].vpn.endpoints[0].protocol
    bare = model.parse(BASE)
    for key in ("connections", "connect_tcp", "port_forwards"):
        out["qubes_firewall:" + key] = list(getattr(bare, key))
    return out


def literal(cell):
    """The value a cell starts with (`value`, as YAML), or None when it starts with words."""
    match = re.match(r"`([^`]*)`", cell)
    return yaml.safe_load(match.group(1)) if match else None


def test_every_key_the_model_accepts_is_documented_once():
    paths = [path for path, _, _ in ROWS]
    assert len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)
    assert set(paths) == model_keys()


def test_required_column_is_the_models():
    documented = {path for path, cells in DOCUMENTED.items() if cells["required"].startswith("yes")}
    assert documented == required()


def test_defaults_written_as_values_are_the_models():
    defaults = model_defaults()
    written = {path for path, cells in DOCUMENTED.items() if cells["default"].startswith("`")}
    assert written == set(defaults)
    for path in written:
        assert literal(DOCUMENTED[path]["default"]) == defaults[path], path


@pytest.mark.parametrize("path", sorted(DOCUMENTED))
def test_example_is_yaml(path):
    cell = DOCUMENTED[path]["example"]
    if cell == "—":
        assert "expire" in path  # only the key the pillar refuses has none
        return
    assert re.fullmatch(r"`[^`]+`", cell), cell
    literal(cell)


def test_lookup_keys_have_their_own_section():
    for path, _, section in ROWS:
        in_lookup = path.startswith("qubes_firewall:lookup:")
        assert in_lookup == section.startswith("`lookup`"), (path, section)
    assert "constants" in [s for _, _, s in ROWS if s.startswith("`lookup`")][0]


def test_since_is_a_release():
    version = (REPO / "VERSION").read_text().strip()
    released = set(re.findall(r"^## \[([0-9]+\.[0-9]+\.[0-9]+)\]", (REPO / "CHANGELOG.md").read_text(), re.M))
    for path, cells in DOCUMENTED.items():
        assert cells["since"] in released | {version}, path
