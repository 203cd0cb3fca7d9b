"""`python -m qwen_minimal TOOL [OPTIONS]`: the tools of qwen_minimal/cli."""

import importlib
import sys

TOOLS = {
    "train": "train a model (a preset, or a run to resume)",
    "generate": "text from a checkpoint",
    "export": "a checkpoint as a transformers checkpoint folder",
    "bench": "latency and throughput against transformers",
    "balancing-study": "the load-balancing strategies trained side by side",
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in TOOLS:
        wrong = (
            f"unknown tool {argv[0]!r}\n"
            if argv and argv[0] not in ("-h", "--help")
            else ""
        )
        listing = "\n".join(f"  {name:<16} {about}" for name, about in TOOLS.items())
        print(
            f"{wrong}usage: python -m qwen_minimal TOOL "
            f"[OPTIONS]\n\ntools:\n{listing}\n\n"
            f"python -m qwen_minimal TOOL --help lists a tool's options",
            file=sys.stderr if wrong or not argv else sys.stdout,
        )
        sys.exit(2 if wrong or not argv else 0)
    tool = importlib.import_module(f"qwen_minimal.cli.{argv[0].replace('-', '_')}")
    tool.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
