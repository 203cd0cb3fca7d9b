"""The command-line tools, `python -m qwen_minimal TOOL --help`: train, generate,
export, bench and balancing-study; options.py holds what they share."""
