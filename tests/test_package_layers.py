"""The package's modules stand on floors, and a module imports only from lower floors:
the model (model/) never imports the trainer (training/), the trainer never imports a
command-line tool (cli/) or the book's helpers (book/), and a newcomer can read the
package bottom up."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qwen_minimal"
FLOORS = [
    {"errors"},
    # files: its write errors are InputErrors
    {"files"},
    {"devices", "model.config"},
    # model/: the building blocks, then the decoder that assembles them
    {"model.rmsnorm", "model.rope", "model.kv_cache", "model.feed_forward"},
    {"model.loss", "model.sampling", "model.moe"},
    {"model.attention", "model.balancing", "model.gated_deltanet"},
    {"model.decoder"},
    {"model"},
    # weights in and out; the trainer's parts that need no data
    {"interop", "training.checkpoint", "training.expert_parallel", "training.optim"},
    # data/: text, tokenizer, token cache, batches
    {"data.hub"},
    {"data.token_cache", "data.batches"},
    {"data.text"},
    {"data.tokenizer"},
    {"data.corpus"},
    {"data"},
    # training/: settings, the loop and what it measures
    {"training.distributed"},
    {"training.monitoring", "training.config"},
    {"training.plots"},
    {"training.loop"},
    {"training"},
    # cli/: the command-line tools; book/: the chapters' helpers
    {"cli.options"},
    {"cli.train", "cli.generate", "cli.bench", "cli.export", "cli.balancing_study"},
    {"cli", "__main__", "book", "book.widgets"},
]
FLOOR = {module: i for i, modules in enumerate(FLOORS) for module in modules}


def imports(path: Path) -> set[str]:
    """The package's modules that `path` imports (relative imports), as dotted names
    inside the package."""
    # the folder: what a relative import starts from
    package = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + [node.module]))
            else:
                found.update(".".join(base + [alias.name]) for alias in node.names)
    return found


def test_every_module_has_a_floor_and_imports_only_from_below():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).replace(
            ".__init__", ""
        )
        if name == "__init__":
            continue  # the package's front door re-exports from any floor
        assert name in FLOOR, (
            f"{name} has no floor in FLOORS: put it above everything it imports"
        )
        for target in imports(path):
            if FLOOR[target] >= FLOOR[name]:
                upward.append(
                    f"{name} (floor {FLOOR[name]}) imports {target} (floor "
                    f"{FLOOR[target]})"
                )
    assert not upward, upward
