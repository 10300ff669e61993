"""The packages are layers: each imports only from layers below it (and from itself), and no modules import each
other in a circle. Read from the code's own imports, function-level ones included."""

import ast
from pathlib import Path

from tests.conftest import REPO

# Lowest first. A package may import from the packages of lower layers only; `pipeline` itself (the version)
# sits below all.
LAYERS = [
    ["common"],
    ["input"],
    ["model"],
    ["folder"],
    ["plan"],
    ["sprites"],
    ["run"],
    ["export", "report"],
    ["unattended"],
    ["cli"],
    ["__main__"],
]
RANK = {package: rank for rank, names in enumerate(LAYERS, start=1) for package in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The pipeline modules (or packages) that a file imports, as absolute names."""
    name, found = module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t == "pipeline" or t.startswith("pipeline.")}


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(name: str) -> int:
    parts = name.split(".")
    return 0 if len(parts) == 1 else RANK[parts[1]]


GRAPH = {module_name(p): imports(p) for p in sorted((REPO / "pipeline").rglob("*.py"))}


def test_every_package_has_a_layer():
    assert {name.split(".")[1] for name in GRAPH if "." in name} == set(RANK)


def test_imports_only_go_down():
    upward = [
        f"{source} -> {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if source.split(".")[:2] != target.split(".")[:2] and layer(target) >= layer(source)
    ]
    assert upward == []


def test_no_module_imports_itself_in_a_circle():
    edges = {s: {t for t in targets if t in GRAPH and t != s and not _package_of(s, t)} for s, targets in GRAPH.items()}
    state, circles = {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target) :] + [node, target]) if target in path else target)
            elif target not in state:
                visit(target, [*path, node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert circles == []


def _package_of(source: str, target: str) -> bool:
    """`target` is a package above `source` (importing a module imports its packages first: no real edge)."""
    return source.startswith(target + ".")
