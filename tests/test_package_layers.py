"""The package's modules stand on floors, and a module imports only from lower floors: the model never imports
the trainer, the trainer never imports a command-line tool, and a newcomer can read the package bottom up."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qwen_minimal"
FLOORS = [
    {"errors", "files"},
    {"config", "cli", "devices"},
    {"rmsnorm", "rope", "kv_cache", "feed_forward", "loss", "sampling", "moe"},
    {"attention", "balancing"},
    {"model"},
    {"interop", "checkpoint", "expert_parallel", "optim"},  # the model's files and numbers: no data, no trainer
    {"data.hub"},
    {"data.token_cache", "data.batches"},
    {"data.text"},
    {"data.tokenizer"},
    {"data.corpus"},
    {"data"},
    {"generate", "bench", "export"},  # tools that need no trainer
    {"distributed"},
    {"monitoring"},
    {"plots"},
    {"train"},
    {"balance", "book", "widgets"},
]
FLOOR = {module: i for i, modules in enumerate(FLOORS) for module in modules}


def imports(path: Path) -> set[str]:
    """The package's modules that `path` imports (relative imports), as dotted names inside the package."""
    package = list(path.relative_to(PACKAGE).parts[:-1])  # the folder: what a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + [node.module]))
            else:
                found.update(".".join(base + [alias.name]) for alias in node.names)
    return found


def test_every_module_has_a_floor_and_imports_only_from_below():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).replace(".__init__", "")
        if name == "__init__":
            continue  # the package's front door re-exports from any floor
        assert name in FLOOR, f"{name} has no floor in FLOORS: put it above everything it imports"
        for target in imports(path):
            if FLOOR[target] >= FLOOR[name]:
                upward.append(f"{name} (floor {FLOOR[name]}) imports {target} (floor {FLOOR[target]})")
    assert not upward, upward
