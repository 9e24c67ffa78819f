"""
README.md and docs/*.md refer only to what exists, and show only commands a
Qubes user runs.

Pure and fast: reads the Markdown, the modules (with ``ast``, never imported)
and the file tree.  Checked in every document:

- repository paths (``pillar.example/...``, ``docs/...``, ``scripts/...``) exist;
- every ``qubes_firewall.NAME`` is a public function of the execution module,
  a state function, or an SLS of ``salt/qubes_firewall/``;
- every ``qubesctl`` command is what qubesctl accepts: ``sudo``, qubesctl's own
  options before the Salt function (Salt's, such as ``--out``, after it), a
  function that exists, an SLS that exists, and a target for qube-side functions;
- ``salt-call`` commands appear only in docs/development.md (the lab);
- pillar keys, in YAML blocks and as ``qubes_firewall:...`` / ``lookup:...``
  paths, are keys the pillar model accepts;
- Markdown links and their ``#anchors`` resolve.

The checks are functions of text, so the tests at the end feed each one a
broken document and see it fail.
"""

import ast
import pathlib
import re
import shlex

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
LAB_DOC = "docs/development.md"  # the one document where salt-call commands belong

# ---- Markdown ----------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w-]*)")
LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


class Doc:
    """A Markdown document split into code blocks and prose paragraphs."""

    def __init__(self, rel, text):
        self.rel, self.text = rel, text
        self.blocks = []      # (line number, language, [lines]); indented blocks have language None
        self.paragraphs = []  # (line number, text with newlines as spaces)
        self._split(text.split("\n"))

    def _split(self, lines):
        i, list_indent, blank_before = 0, 0, True
        block, para = None, None
        while i < len(lines):
            line = lines[i]
            fence = FENCE.match(line)
            if fence:
                block = self._close(block)
                para = self._para(para)
                start, marker, body = i + 1, fence.group(1), []
                i += 1
                while i < len(lines) and not lines[i].strip().startswith(marker):
                    body.append(lines[i])
                    i += 1
                self.blocks.append((start, fence.group(2) or "", body))
                i, blank_before = i + 1, False
                continue
            if not line.strip():
                if block is not None:
                    block[2].append("")
                para = self._para(para)
                i, blank_before = i + 1, True
                continue
            indent = len(line) - len(line.lstrip(" "))
            if indent >= list_indent + 4 and (blank_before or block is not None) and para is None:
                if block is None:
                    block = (i + 1, None, [])
                block[2].append(line[list_indent + 4:])
            else:
                block = self._close(block)
                item = LIST_ITEM.match(line)
                if item:
                    para = self._para(para)
                    list_indent = len(item.group(0))
                elif indent == 0:
                    list_indent = 0
                if para is None:
                    para = [i + 1, []]
                para[1].append(line.strip())
            i, blank_before = i + 1, False
        self._close(block)
        self._para(para)

    def _close(self, block):
        if block is not None:
            while block[2] and not block[2][-1].strip():
                block[2].pop()
            self.blocks.append(block)
        return None

    def _para(self, para):
        if para is not None:
            self.paragraphs.append((para[0], " ".join(para[1])))
        return None

    def spans(self):
        """(line, text) of every inline code span."""
        return [(n, m.group(1)) for n, text in self.paragraphs for m in SPAN.finditer(text)]

    def code(self):
        """(line, text) of every line of code: block lines and inline spans."""
        out = [(start + k, line) for start, _lang, body in self.blocks for k, line in enumerate(body)]
        return out + self.spans()

    def headings(self):
        return [HEADING.match(text).group(2) for _n, text in self.paragraphs if HEADING.match(text)]


def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc):
    seen, out = {}, set()
    for heading in doc.headings():
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else "%s-%d" % (base, n))
        seen[base] = n + 1
    return out


# ---- what exists ---------------------------------------------------------------


def _module_file(kind, name):
    """``_modules/NAME.py``, or its underscore-prefixed pure-core spelling."""
    for candidate in (REPO / kind / (name + ".py"), REPO / kind / ("_" + name + ".py")):
        if candidate.is_file():
            return candidate
    raise AssertionError("neither %s/%s.py nor %s/_%s.py exists" % (kind, name, kind, name))


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _strings(node):
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _public_defs(tree):
    return {n.name for n in tree.body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def exec_functions():
    """The execution module's public functions: its defs without a leading
    underscore, limited to ``PUBLIC`` when the module declares that list."""
    tree = _tree(_module_file("_modules", "qubes_firewall"))
    names = _public_defs(tree)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PUBLIC" for t in node.targets):
            listed = _strings(node.value)
            if listed is not None:
                names &= set(listed)
    return names - {"lib"}


def state_functions():
    """The state module's functions, aliases included (``__func_alias__``, ``old = new``)."""
    tree = _tree(_module_file("_states", "qubes_firewall"))
    names = _public_defs(tree)
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            name = getattr(target, "id", "")
            if name == "__func_alias__" and isinstance(node.value, ast.Dict):
                names |= {v.value for v in node.value.values if isinstance(v, ast.Constant)}
            elif not name.startswith("_") and isinstance(node.value, ast.Name) and node.value.id in names:
                names.add(name)
    return names


def sls_names():
    """``qubes_firewall`` and ``qubes_firewall.X`` for salt/qubes_firewall/X.sls."""
    out = set()
    for path in (REPO / "salt" / "qubes_firewall").glob("*.sls"):
        out.add("qubes_firewall" if path.stem == "init" else "qubes_firewall." + path.stem)
    return out


def model_keys():
    """The keys the pillar model accepts at each level, read from its ``allowed=`` arguments."""
    path = _module_file("_modules", "qubes_firewall_model")
    tree = _tree(path)
    module_names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and _strings(node.value) is not None:
            for target in node.targets:
                module_names[getattr(target, "id", None)] = _strings(node.value)
    found = []
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        local = dict(module_names)
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and _strings(node.value) is not None:
                for target in node.targets:
                    local[getattr(target, "id", None)] = _strings(node.value)
        for node in ast.walk(func):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "allowed":
                        keys = _strings(kw.value)
                        if keys is None and isinstance(kw.value, ast.Name):
                            keys = local.get(kw.value.id)
                        if keys:
                            found.append(set(keys))
    levels = {"top": {"qubes", "port_forwards"}, "lookup": {"rw_config"}, "qube": {"netvm"},
              "firewall": {"action"}, "connections": {"from", "to"}, "connect_tcp": {"client", "server"},
              "port_forwards": {"external_port"}}
    out = {}
    for level, marker in levels.items():
        sets = [keys for keys in found if marker <= keys]
        assert len(sets) == 1, "%s: expected one allowed-keys list for %s, found %r" % (path.name, level, sets)
        out[level] = sets[0]
    return out


def schema(keys):
    """A tree of the pillar: ("keys", {key: node}), ("map", node) for free names, ("list", node), LEAF."""
    leaf = ("leaf",)

    def level(name, **children):
        return ("keys", {k: children.get(k, leaf) for k in keys[name]})

    qube = level("qube", firewall=("list", level("firewall")))
    top = {"lookup": level("lookup"), "addresses": ("map", leaf), "qubes": ("map", qube),
           "connections": ("list", level("connections")), "connect_tcp": ("list", level("connect_tcp")),
           "port_forwards": ("list", level("port_forwards"))}
    unknown = set(top) - keys["top"]
    assert not unknown, "the model no longer accepts %s at the top" % sorted(unknown)
    return ("keys", {k: top.get(k, leaf) for k in keys["top"]}), qube


# ---- the checks (each returns a list of problems) --------------------------------

PATH = re.compile(r"(?<![\w/.~$-])((?:pillar\.example|docs|scripts|packaging|tests|benchmarks|_modules|_states|salt"
                  r"|requirements)/[\w.*/-]*)")
REF = re.compile(r"(?<![\w/.-])qubes_firewall\.([a-z_][a-z0-9_]*)")
FILE_SUFFIXES = {"sls", "top", "py", "yaml", "yml", "policy"}
SALT_CALL = re.compile(r"\bsalt-call\b(?:\s+-{1,2}\S+)*\s+[a-z_]+\.[a-z_]+")
# a pillar path; not a managed block's marker (# BEGIN qubes_firewall:rules)
PILLAR_PATH = re.compile(r"(?<![\w/-])(?<!BEGIN )(?<!END )qubes_firewall((?::[\w.<>-]+)+)")
LOOKUP = re.compile(r"(?<![\w:])lookup:([a-z_]+)")

QUBESCTL_FLAGS = {"--show-output", "--force-color", "--skip-dom0", "--skip-top-check", "--sync-extmods", "--all",
                  "--templates", "--standalones", "--app"}
QUBESCTL_VALUES = {"--targets", "--max-concurrency"}
SALT_FUNCTIONS = {"state.apply", "state.sls", "state.highstate", "saltutil.sync_all", "top.enable", "top.disable",
                  "pillar.items", "pillar.get", "sys.doc", "test.ping", "grains.items"}
# functions that act on a qube's own state: they need a target, never dom0
QUBE_FUNCTIONS = {"status", "drift", "backup", "backups", "revert"}
# functions that ask dom0 (Qubes or the pillar alone)
DOM0_FUNCTIONS = {"check", "diagram", "targets", "dom0_problems", "addresses", "qubes_release", "reconnect"}


def check_paths(doc, repo=REPO):
    problems, text = [], doc.text
    for m in PATH.finditer(text):
        rel = m.group(1).rstrip(".,:;")
        if not (list(repo.glob(rel.rstrip("/"))) if "*" in rel else (repo / rel).exists()):
            line = text.count("\n", 0, m.start()) + 1
            problems.append("%s:%d: %s does not exist" % (doc.rel, line, rel))
    for m in re.finditer(r"-m (benchmarks)\.(\w+)", doc.text):
        if not (repo / m.group(1) / (m.group(2) + ".py")).is_file():
            problems.append("%s: no module %s.%s" % (doc.rel, m.group(1), m.group(2)))
    return problems


def check_refs(doc, known):
    problems = []
    for m in REF.finditer(doc.text):
        name = m.group(1)
        if name in FILE_SUFFIXES or name in known:
            continue
        line = doc.text.count("\n", 0, m.start()) + 1
        problems.append("%s:%d: qubes_firewall.%s is no public function, state or SLS of the formula"
                        % (doc.rel, line, name))
    return problems


def check_salt_call(doc):
    if doc.rel == LAB_DOC:
        return []
    return ["%s:%d: a salt-call command (users run qubesctl; salt-call belongs in %s): %s"
            % (doc.rel, n, LAB_DOC, text.strip()) for n, text in doc.code() if SALT_CALL.search(text)]


def commands(doc):
    """(line, command) of every qubesctl command: block lines (with continuations),
    output headers (``# sudo qubesctl ...``) and inline spans."""
    out, lines = [], []
    for start, lang, body in doc.blocks:
        if lang in ("yaml", "json", "mermaid", "jinja"):  # data: only its header comment may be a command
            lines += [(start + k, line) for k, line in enumerate(body) if line.startswith("# ")]
            continue
        k = 0
        while k < len(body):
            line, n = body[k], start + k
            while line.rstrip().endswith("\\") and k + 1 < len(body):
                k += 1
                line = line.rstrip()[:-1] + " " + body[k].strip()
            lines.append((n, line))
            k += 1
    lines += [(n, text) for n, text in doc.spans() if _is_command(text)]
    for n, line in lines:
        text = line.strip()
        if text.startswith("# "):
            text = re.sub(r"\s{2,}\(.*\)$", "", text[2:])
        if re.match(r"(sudo\s+)?qubesctl\b", text):
            out.append((n, text))
    return out


def _is_command(text):
    """A qubesctl line that names a Salt function (not a mention such as `qubesctl --skip-dom0`)."""
    return re.search(r"\s[a-z_]+\.[A-Za-z_]+(\s|$)", text) is not None


def _substitutions(command):
    """The command with each ``$(...)`` replaced by a word, and the inner commands."""
    inner, out, i = [], "", 0
    while i < len(command):
        if command.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(command) and depth:
                depth += {"(": 1, ")": -1}.get(command[j], 0)
                j += 1
            inner.append(command[i + 2:j - 1])
            out += "SUBSTITUTED"
            i = j
        else:
            out += command[i]
            i += 1
    return out, inner


def check_qubesctl(rel, n, command, exec_names, sls):
    """Problems of one qubesctl command line, as qubesctl parses it."""
    outer, inner = _substitutions(command)
    problems = []
    for sub in inner:
        problems += check_qubesctl(rel, n, sub.strip(), exec_names, sls)
    try:
        words = shlex.split(outer, comments=True)
    except ValueError as exc:
        return problems + ["%s:%d: cannot parse %r: %s" % (rel, n, command, exc)]
    where = "%s:%d: %s: " % (rel, n, command)
    if words[:1] != ["sudo"]:
        problems.append(where + "qubesctl runs as root in dom0: sudo qubesctl")
        words = ["sudo"] + words
    words = words[2:]  # past sudo qubesctl
    opts = {}
    while words and words[0].startswith("-"):
        word = words.pop(0)
        name, _, value = word.partition("=")
        if name in QUBESCTL_VALUES:
            if not value:
                value = words.pop(0) if words else ""
            if not value:
                problems.append(where + "%s needs a value" % name)
        elif name not in QUBESCTL_FLAGS:
            problems.append(where + "qubesctl has no option %s (Salt's options go after the function)" % word)
        opts[name] = value
    if "--targets" in opts and "--all" in opts:
        problems.append(where + "--targets and --all exclude each other")
    if not words:
        return problems + [where + "no Salt function"]
    func, args = words[0], words[1:]
    module, _, name = func.partition(".")
    if name.isupper():  # a placeholder: qubes_firewall.FUNCTION
        return problems
    if module == "qubes_firewall":
        if name not in exec_names:
            problems.append(where + "qubes_firewall.%s is no public function" % name)
        if name in QUBE_FUNCTIONS and not ("--skip-dom0" in opts and "--targets" in opts):
            problems.append(where + "%s acts in a qube: --skip-dom0 --targets=QUBE" % name)
        if name in DOM0_FUNCTIONS and "--skip-dom0" in opts:
            problems.append(where + "%s runs in dom0, not with --skip-dom0" % name)
    elif func not in SALT_FUNCTIONS:
        problems.append(where + "%s is not a Salt function these docs use" % func)
    if func in ("state.apply", "state.sls"):
        mods = [a for a in args if not a.startswith("-") and "=" not in a]
        for mod in mods[:1]:
            for one in mod.split(","):
                if one.startswith("qubes_firewall") and one not in sls:
                    problems.append(where + "no SLS %s in salt/qubes_firewall/" % one)
    return problems


def _walk(node, path, where, problems):
    """A pillar path (list of components) against the schema node."""
    for i, part in enumerate(path):
        kind = node[0]
        if kind == "keys":
            if part not in node[1]:
                problems.append("%s: unknown pillar key %r at %s" % (where, part, ":".join(path[:i + 1])))
                return
            node = node[1][part]
        elif kind in ("map", "list"):
            if kind == "list" and not part.isdigit():
                problems.append("%s: %s is a list, %r is no index" % (where, ":".join(path[:i]), part))
                return
            node = node[1]
        elif not part.isdigit():
            problems.append("%s: %s has no keys (%r)" % (where, ":".join(path[:i]), part))
            return


def _walk_data(node, data, path, where, problems):
    kind = node[0]
    if kind == "keys":
        if not isinstance(data, dict):
            return
        for key, value in data.items():
            if key not in node[1]:
                problems.append("%s: unknown pillar key %r at %s" % (where, key, ":".join(path + [str(key)])))
            else:
                _walk_data(node[1][key], value, path + [str(key)], where, problems)
    elif kind == "map" and isinstance(data, dict):
        for key, value in data.items():
            _walk_data(node[1], value, path + [str(key)], where, problems)
    elif kind == "list" and isinstance(data, list):
        for i, value in enumerate(data):
            _walk_data(node[1], value, path + [str(i)], where, problems)


def check_pillar(doc, tree, qube, lookup_keys):
    problems = []
    for start, lang, body in doc.blocks:
        if lang not in ("yaml", None, ""):
            continue
        text = "\n".join(body)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        where = "%s:%d" % (doc.rel, start)
        if isinstance(data, dict) and "qubes_firewall" in data:
            _walk_data(tree, data["qubes_firewall"], ["qubes_firewall"], where, problems)
        elif (isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), dict)
              and "netvm" in next(iter(data.values()))):
            _walk_data(qube, next(iter(data.values())), ["qubes_firewall", "qubes", next(iter(data))], where,
                       problems)
    block_lines = [(start + k, line) for start, _lang, body in doc.blocks for k, line in enumerate(body)]
    for n, text in doc.paragraphs + block_lines:
        for m in PILLAR_PATH.finditer(text):
            parts = [p for p in m.group(1).split(":") if p]
            if any("<" in p for p in parts):
                continue
            _walk(tree, parts, "%s:%d" % (doc.rel, n), problems)
        for m in LOOKUP.finditer(text):
            if m.group(1) not in lookup_keys:
                problems.append("%s:%d: lookup:%s is no lookup key" % (doc.rel, n, m.group(1)))
    return problems


def check_links(doc, docs, repo=REPO):
    """Every relative link's file exists and its anchor is a heading of that file."""
    problems = []
    base = (repo / doc.rel).parent
    prose = "\n".join(text for _n, text in doc.paragraphs)
    for m in LINK.finditer(prose):
        target = m.group(2)
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        where = "%s: [%s](%s)" % (doc.rel, m.group(1)[:40], target)
        if not file_part:
            if anchor not in anchors(doc):
                problems.append(where + ": no heading with anchor #%s" % anchor)
            continue
        path = (base / file_part).resolve()
        if not path.exists():
            problems.append(where + ": no such file")
            continue
        if anchor:
            try:
                rel = str(path.relative_to(repo))
            except ValueError:
                problems.append(where + ": outside the repository")
                continue
            other = docs.get(rel) or (Doc(rel, path.read_text()) if path.suffix == ".md" else None)
            if other is None or anchor not in anchors(other):
                problems.append(where + ": no heading with anchor #%s" % anchor)
    return problems


# ---- the documents ---------------------------------------------------------------


def documents():
    paths = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
    return {str(p.relative_to(REPO)): Doc(str(p.relative_to(REPO)), p.read_text()) for p in paths}


def _report(problems):
    assert not problems, "\n".join(problems)


def test_the_documents_are_read():
    docs = documents()
    assert {"README.md", LAB_DOC, "docs/operations.md"} <= set(docs)
    readme = docs["README.md"]
    # the two commands CI and developers run stay in README
    code = [text.strip() for _n, text in readme.code()]
    assert any(line.startswith("scripts/test.sh") for line in code)
    assert any(line.startswith("scripts/demo.sh") for line in code)
    assert len(commands(readme)) >= 10


def test_the_package_named_in_readme_is_this_version():
    version = (REPO / "VERSION").read_text().strip()
    named = set(re.findall(r"qubes-firewall-formula-(\d+\.\d+\.\d+)-1\.noarch\.rpm", documents()["README.md"].text))
    assert named == {version}, "README names the RPM of %s, VERSION says %s" % (sorted(named), version)


def test_paths_exist():
    _report([p for doc in documents().values() for p in check_paths(doc)])


def test_function_state_and_sls_refs_exist():
    known = exec_functions() | state_functions() | {s.split(".", 1)[1] for s in sls_names() if "." in s}
    _report([p for doc in documents().values() for p in check_refs(doc, known)])


def test_salt_call_only_in_the_lab_doc():
    _report([p for doc in documents().values() for p in check_salt_call(doc)])


def test_qubesctl_commands_are_valid():
    exec_names, sls = exec_functions(), sls_names()
    _report([p for doc in documents().values() for n, cmd in commands(doc)
             for p in check_qubesctl(doc.rel, n, cmd, exec_names, sls)])


def test_pillar_keys_exist():
    keys = model_keys()
    tree, qube = schema(keys)
    problems = [p for doc in documents().values() for p in check_pillar(doc, tree, qube, keys["lookup"])]
    pillar_md = REPO / "docs" / "pillar.md"
    if pillar_md.is_file():  # the key reference: every key the docs use is in it
        reference = pillar_md.read_text()
        used = {k for level in keys.values() for k in level}
        problems += ["docs/pillar.md: key %s is missing" % k for k in sorted(used)
                     if not re.search(r"[`:]%s[`:]" % re.escape(k), reference)]
    _report(problems)


def test_links_and_anchors_resolve():
    docs = documents()
    _report([p for doc in docs.values() for p in check_links(doc, docs)])


# ---- the checks can fail -----------------------------------------------------------

BROKEN = """# Title

## A section

See [here](#a-section), [there](#no-such-heading) and [gone](docs/nothing.md).
Also `pillar.example/nothing.sls` and `qubes_firewall.no_such_function`.

    sudo qubesctl --out=json qubes_firewall.check work build 22
    qubesctl qubes_firewall.status
    sudo qubesctl --skip-dom0 --targets=web state.apply qubes_firewall.nothing
    salt-call --local qubes_firewall.status

```yaml
qubes_firewall:
  qubes:
    web: {netvm: sys-net, netvn: x}
  lookup: {rw_config: /rw/config}
```

Set `qubes_firewall:port_forwards:0:interface` or `lookup:nothing`.
"""


def test_each_check_fails_on_a_broken_document():
    doc = Doc("docs/broken.md", BROKEN)
    links = check_links(doc, {doc.rel: doc})
    assert [p.split(": ")[-1] for p in links] == ["no heading with anchor #no-such-heading", "no such file"]
    assert check_paths(doc) == ["docs/broken.md:5: docs/nothing.md does not exist",
                                "docs/broken.md:6: pillar.example/nothing.sls does not exist"]
    known = exec_functions() | state_functions()
    assert [p.split(": ")[-1] for p in check_refs(doc, known)] == [
        "qubes_firewall.no_such_function is no public function, state or SLS of the formula",
        "qubes_firewall.nothing is no public function, state or SLS of the formula"]
    assert len(check_salt_call(doc)) == 1
    problems = [p for n, cmd in commands(doc) for p in check_qubesctl(doc.rel, n, cmd, exec_functions(), sls_names())]
    assert any("has no option --out=json" in p for p in problems)
    assert any("sudo qubesctl" in p and "qubesctl qubes_firewall.status:" in p for p in problems)
    assert any("status acts in a qube" in p for p in problems)
    assert any("no SLS qubes_firewall.nothing" in p for p in problems)
    keys = model_keys()
    tree, qube = schema(keys)
    pillar = check_pillar(doc, tree, qube, keys["lookup"])
    assert any("'netvn'" in p for p in pillar)
    assert any("'interface'" in p for p in pillar)
    assert any("lookup:nothing" in p for p in pillar)
    assert len(pillar) == 3


def test_a_good_document_passes_every_check():
    good = Doc("README.md", "# T\n\n## Apply\n\n[a](#apply) [b](docs/operations.md#troubleshooting)\n\n"
                            "    sudo qubesctl --skip-dom0 --targets=web --show-output qubes_firewall.status fmt=text\n"
                            "    sudo qubesctl qubes_firewall.diagram --out=newline_values_only\n")
    assert check_links(good, {good.rel: good}) == []
    assert [p for n, cmd in commands(good)
            for p in check_qubesctl(good.rel, n, cmd, exec_functions(), sls_names())] == []


def test_slugs_are_githubs():
    assert slug("Qubes 4.3 and 4.2") == "qubes-43-and-42"
    assert slug("The preflight: what it checks before changing anything") == \
        "the-preflight-what-it-checks-before-changing-anything"
    assert slug("`status`: every rule, its origin") == "status-every-rule-its-origin"
