"""The shape of the source tree: no import loops between the modules of a
crate, no source file over 600 lines (in-file test modules aside), and no
two Rust test helpers of the same name.

A loop means two modules that cannot be understood or changed apart; a long
file means an idea without its own home. Both are checked here so that they
stay fixed.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRATES = ["ext", "replicator", "wire"]
MAX_LINES = 600
TEST_MODULE = re.compile(r"^\s*#\[cfg\(test\)\]", re.M)


def sources(crate):
    for path in sorted((ROOT / crate / "src").rglob("*.rs")):
        yield path


def top_module(crate, path):
    """The crate's top-level module a file belongs to (`a` for a.rs, a/mod.rs
    and a/b.rs); the crate root for lib.rs and main.rs."""
    parts = list(path.relative_to(ROOT / crate / "src").with_suffix("").parts)
    if len(parts) == 1 and parts[0] in ("lib", "main"):
        return None
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts[0]


def without_tests(text):
    m = TEST_MODULE.search(text)
    return text[: m.start()] if m else text


def imported_modules(text):
    """Top-level modules named by `crate::x` paths, including each name in a
    `use crate::{a, b::c, ...}` group."""
    names = set(re.findall(r"crate::(\w+)", text))
    for group in re.findall(r"crate::\{(.*?)\};", text, re.S):
        depth, token = 0, ""
        for ch in group + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if depth == 0 and ch == ",":
                m = re.match(r"\s*(\w+)", token)
                if m:
                    names.add(m.group(1))
                token = ""
            else:
                token += ch
    return names


def import_graph(crate):
    graph = {}
    for path in sources(crate):
        module = top_module(crate, path)
        if module is None:
            continue
        deps = imported_modules(without_tests(path.read_text()))
        graph.setdefault(module, set()).update(deps)
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_loop_through_a_third_module():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_grouped_imports_are_seen():
    text = "use crate::{a, b::{C, D}, e::f};\nuse crate::g::H;\n"
    assert imported_modules(text) == {"a", "b", "e", "g"}


@pytest.mark.parametrize("crate", CRATES)
def test_no_import_loops(crate):
    loops = cycles(import_graph(crate))
    assert loops == [], f"{crate}: modules that import each other: {loops}"


@pytest.mark.parametrize("crate", CRATES)
def test_no_source_file_over_600_lines(crate):
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources(crate)
        if (n := without_tests(p.read_text()).count("\n")) > MAX_LINES
    }
    assert long == {}, f"files over {MAX_LINES} lines (tests aside): {long}"


# ---------------------------------------------------------------------------
# Rust test helpers: one name, one meaning. The tests share one helper layer
# (`lsync_tests`, glob-imported), where a local function silently shadows a
# shared one of the same name; so no free function name may be defined in two
# files of tests/src and tests/tests. Methods (indented) and #[test] functions
# (one per behaviour, named for it) are not helpers.

RUST_TEST_FILES = ["tests/src", "tests/tests"]
FREE_FN = re.compile(r"^(?:pub(?:\([\w:]+\))? )?fn (\w+)")
INLINE_MOD = re.compile(r"^(?:pub(?:\([\w:]+\))? )?mod \w+ \{")


def free_functions(text):
    """Names of the free functions in a Rust file: `fn` or `pub fn` at column
    0, or at 4 spaces inside a `mod x {` block, not marked `#[test]`."""
    lines = text.splitlines()
    in_mod = False
    for i, line in enumerate(lines):
        if INLINE_MOD.match(line):
            in_mod = True
            continue
        if in_mod and line.startswith("}"):
            in_mod = False
            continue
        if in_mod and line.startswith("    ") and not line.startswith("     "):
            line = line[4:]
        m = FREE_FN.match(line)
        if not m:
            continue
        attrs, j = [], i - 1
        while j >= 0 and lines[j].strip().startswith(("#[", "//")):
            attrs.append(lines[j].strip())
            j -= 1
        if "#[test]" not in attrs:
            yield m.group(1)


def helper_files():
    for d in RUST_TEST_FILES:
        yield from sorted((ROOT / d).rglob("*.rs"))


def test_the_helper_finder_skips_tests_and_methods():
    text = (
        "fn helper() {}\n"
        "pub fn shared(c: &C) -> i64 {\n    0\n}\n"
        "#[test]\n#[ignore = \"slow\"]\nfn a_test() {}\n"
        "impl X {\n    fn method(&self) {}\n}\n"
        "proptest! {\n    #[test]\n    fn prop(x in any::<u8>()) {}\n}\n"
        "mod inner {\n    pub fn nested() {}\n        fn deeper() {}\n}\n"
    )
    assert list(free_functions(text)) == ["helper", "shared", "nested"]


def test_no_two_rust_test_helpers_share_a_name():
    where = {}
    for path in helper_files():
        for name in free_functions(path.read_text()):
            where.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    shared = {n: sorted(f) for n, f in where.items() if len(f) > 1}
    assert shared == {}, f"helpers defined in more than one file: {shared}"


LSYNC_TABLE = re.compile(
    r"\blsync_(config|devices|tables|dirty|deleted|clock|deferred|pending|peers|parked)\b(?!\s*\()"
)


def test_the_replicator_names_no_lsync_table():
    """The replicator reaches lsync's state through SQL functions only, so the
    extension can change its tables without breaking the sidecar."""
    named = []
    for path in sources("replicator"):
        code = without_tests(path.read_text())
        for n, line in enumerate(code.splitlines(), 1):
            line = line.split("//", 1)[0]
            if LSYNC_TABLE.search(line):
                named.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert named == [], "\n".join(named)
