"""One repository URL: `repository.url` in _config.yml is the source of truth, and every
other mention of this project's GitHub repository (the notebooks' Colab install cells,
the README, the book's pages, pyproject.toml, the workflows) must name the same one. A
fork changes _config.yml, and this test lists, file by file and line by line, what else
to change. Pure text; reads the working tree as git sees it (.gitignore'd paths left
out)."""

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# github.com/OWNER/REPO (https, git+https, or git@github.com:OWNER/REPO), Colab's
# github/OWNER/REPO and the Pages site OWNER.github.io/REPO: the three ways a file can
# point at a GitHub repository. REPO stops before a ".git".
NAME = r"[A-Za-z0-9_.-]+"
REPO = rf"(?P<repo>{NAME}?)(?:\.git)?(?![\w.-])"
MENTIONS = [
    re.compile(rf"(?<![\w.-])github\.com[/:](?P<owner>{NAME})/{REPO}"),
    re.compile(rf"colab\.research\.google\.com/github/(?P<owner>{NAME})/{REPO}"),
    re.compile(rf"(?<![\w.-])(?P<owner>{NAME})\.github\.io/{REPO}"),
]


def configured_repository() -> tuple[str, str]:
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    match = re.fullmatch(
        rf"https://github\.com/(?P<owner>{NAME})/(?P<repo>{NAME})", url
    )
    assert match and not match["repo"].endswith(".git"), (
        f"_config.yml: repository.url is {url!r}; write it as "
        "https://github.com/OWNER/REPO"
    )
    return match["owner"], match["repo"]


def project_files():
    """The repository's files, as `git status` sees them: the .gitignore'd ones (.venv,
    _build, ...) left out."""
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def is_ignored(path: Path) -> bool:
        relative = path.relative_to(ROOT).as_posix()
        return path.name == ".git" or any(
            fnmatch.fnmatch(relative if "/" in p else path.name, p) for p in ignored
        )

    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [s for s in subfolders if not is_ignored(Path(folder, s))]
        yield from (
            Path(folder, f) for f in sorted(files) if not is_ignored(Path(folder, f))
        )


def mentions_of_this_project(text: str, names: set[str]):
    """(line number, match) for every repository mention in `text` whose name is one of
    `names` (this project's, under any owner; other projects' repositories, e.g.
    gpt-fast, are not this test's business)."""
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in MENTIONS:
            yield from (
                (number, match)
                for match in pattern.finditer(line)
                if match["repo"] in names
            )


def naming(match: re.Match, owner: str, repo: str) -> str:
    """The text of `match` with OWNER and REPO put in its place (the owner comes first
    in every pattern)."""
    text, start = match[0], match.start()
    (owner_start, owner_end), (repo_start, repo_end) = (
        (a - start, b - start) for a, b in (match.span("owner"), match.span("repo"))
    )
    return (
        text[:owner_start] + owner + text[owner_end:repo_start] + repo + text[repo_end:]
    )


def test_the_config_names_the_repository_and_everything_else_agrees():
    owner, repo = configured_repository()
    # the repository's name, and the package's: a fork that renames the repository still
    # finds the old name
    package = re.search(
        r'^name = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE
    )[1]
    found, wrong = 0, []
    for file in project_files():
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images and other binary files
            continue
        for number, match in mentions_of_this_project(text, {repo, package}):
            found += 1
            if (match["owner"], match["repo"]) != (owner, repo):
                wrong.append(
                    f"{file.relative_to(ROOT)}:{number}: {match[0]} -> "
                    f"{naming(match, owner, repo)}"
                )
    if wrong:
        pytest.fail(
            f"_config.yml's repository.url is https://github.com/{owner}/{repo}, but "
            "these lines name another "
            "repository; change them as shown (or repository.url, if they are "
            "right):\n  " + "\n  ".join(sorted(wrong)),
            pytrace=False,
        )
    assert found > 1  # _config.yml and more: the search itself works


def test_the_package_and_its_tests_are_formatted_at_the_page_width():
    """ruff format and ruff check (pyproject.toml: line-length 88, the book's column),
    so that a chapter shows the package's code as it is."""
    for command in (["format", "--check"], ["check", "--output-format", "concise"]):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ruff",
                *command,
                "--no-cache",
                "qwen_minimal",
                "tests",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (
            f"`ruff {' '.join(command)} qwen_minimal tests` fails (run `ruff format "
            f"qwen_minimal tests`; shorten what it cannot by hand):\n{result.stdout}"
            f"{result.stderr}"
        )
