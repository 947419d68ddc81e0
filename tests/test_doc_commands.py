"""Every command the documentation quotes runs with flags its script defines.

Researchers copy the commands of README.md and of the runs' READMEs under results/; a flag renamed or
removed since would only show up as an error on their machine. This reads every quoted
``python <experiments|rl|benchmarks>/<script>.py --flag ...`` (code blocks, indented blocks and inline
code spans, which may wrap across lines), asks each script for the flags it defines (``--helpfull``, which
absl answers before any work starts), and checks each flag's name, and the value of enum flags, against them.
"""
from __future__ import annotations

import concurrent.futures
import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SCRIPT = re.compile(r"\bpython3? ((?:experiments|rl|benchmarks)/\w+\.py)\b")
SHELL_OPERATORS = {"|", "||", "&&", "&", ";", ">", ">>", "<", "2>&1", "2>"}
PLACEHOLDER = re.compile(r"[<>]|\.\.\.|^[A-Z]$|^[A-Z]+_?[A-Z]*$")


def documents() -> list[str]:
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.md"),
                                                                recursive=True))


def code_fragments(text: str) -> list[str]:
    """The code of a markdown text: fenced blocks and indented blocks line by line (backslash continuations
    joined), inline code spans whole (newlines become spaces)."""
    fragments = []

    def fenced(match):
        fragments.extend(logical_lines(match.group(1)))
        return "\n"
    text = re.sub(r"```[^\n]*\n(.*?)```", fenced, text, flags=re.S)
    indented = [line for line in text.split("\n")
                if line.startswith("    ") and not line.lstrip().startswith(("|", "-", "*"))]
    fragments.extend(logical_lines("\n".join(indented)))
    fragments.extend(span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", text))
    return fragments


def logical_lines(block: str) -> list[str]:
    return block.replace("\\\n", " ").split("\n")


def tokens(after: str) -> list[str]:
    try:
        words = shlex.split(after, comments=True)
    except ValueError:  # an unbalanced quote in a prose span: plain words will do for flag names
        words = after.split()
    out = []
    for word in words:
        if word in SHELL_OPERATORS or word.startswith((">", "2>", "|")):
            break
        out.append(word)
    return out


def quoted_commands() -> dict[str, list[tuple[str, list[str]]]]:
    """script -> [(where, its flag tokens)] for every quoted command."""
    commands = defaultdict(list)
    for path in documents():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for fragment in code_fragments(text):
            for match in SCRIPT.finditer(fragment):
                rest = fragment[match.end():]
                following = SCRIPT.search(rest)  # two commands in one span: each gets its own flags
                if following:
                    rest = rest[:following.start()]
                flags = [t for t in tokens(rest) if t.startswith("--")]
                commands[match.group(1)].append((os.path.relpath(path, ROOT), flags))
    return commands


COMMANDS = quoted_commands()


@functools.lru_cache(maxsize=None)
def all_defined_flags() -> dict:
    """script -> :func:`defined_flags`, the scripts asked side by side (most of the time is imports)."""
    scripts = sorted(COMMANDS)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(scripts, pool.map(defined_flags, scripts)))


def defined_flags(script: str) -> tuple[set, set, dict]:
    """(flag names, boolean flag names, enum flag -> choices) from the script's ``--helpfull``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    assert os.path.isfile(os.path.join(ROOT, script)), f"the documents quote {script}, which does not exist"
    r = subprocess.run([sys.executable, script, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    names, bools, enums = set(), set(), {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s+--(\[no\])?([\w.-]+):(?:\s+<([^>]*)>:)?", line)
        if m:
            names.add(m.group(2))
            if m.group(1):
                bools.add(m.group(2))
            if m.group(3) and "|" in m.group(3) and "," not in m.group(3):
                enums[m.group(2)] = set(m.group(3).split("|"))
    assert names, f"{script} --helpfull listed no flags (exit {r.returncode}): {r.stderr[-500:]}"
    return names, bools, enums


def test_the_documents_quote_commands_of_the_main_scripts():
    # the extraction itself: a change of markdown style must not silently leave nothing to check
    for script in ("experiments/omniglot.py", "experiments/sinusoid.py", "rl/evaluate.py",
                   "rl/train_navigation.py", "benchmarks/meta_step.py"):
        assert COMMANDS.get(script), f"no quoted command of {script} found"
    assert sum(len(v) for v in COMMANDS.values()) > 80
    assert any("--num_ways=20" in flags for _, flags in COMMANDS["experiments/omniglot.py"])
    # an inline span that wraps onto the next line keeps the flags after the line break
    assert any(flags[:1] == ["--task=halfcheetah_dir"] and "--test_lr=0.5" in flags
               for _, flags in COMMANDS["rl/evaluate.py"])


def test_a_wrong_flag_would_be_caught():
    names, bools, enums = all_defined_flags()["experiments/omniglot.py"]
    assert problems(["--num_ways=20", "--nofirst_order", "--model=mlp"], names, bools, enums) == []
    assert problems(["--num_way=20", "--noinner_lr", "--model=resnet"], names, bools, enums) == [
        "--num_way=20: no such flag", "--noinner_lr: inner_lr is not a boolean flag",
        "--model=resnet: not one of conv, mlp"]


def problems(flag_tokens: list[str], names: set, bools: set, enums: dict) -> list[str]:
    out = []
    for token in flag_tokens:
        name, _, value = token[2:].partition("=")
        if name in names:
            if value and name in enums and not PLACEHOLDER.search(value) and value not in enums[name]:
                out.append(f"{token}: not one of {', '.join(sorted(enums[name]))}")
        elif name.startswith("no") and name[2:] in names:
            if name[2:] not in bools:
                out.append(f"{token}: {name[2:]} is not a boolean flag")
        elif not PLACEHOLDER.search(name):
            out.append(f"{token}: no such flag")
    return out


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_quoted_commands_use_flags_the_script_defines(script):
    names, bools, enums = all_defined_flags()[script]
    found = [f"{where}: python {script} ... {p}" for where, flags in COMMANDS[script]
             for p in problems(flags, names, bools, enums)]
    assert not found, "\n".join(found)


def test_code_fragments_finds_every_kind_of_code():
    text = ("Prose `python rl/evaluate.py --task=navigation\n--methods=maml` more prose.\n\n"
            "```bash\npython experiments/omniglot.py --num_ways=20 \\\n    --num_shots=5 > log 2>&1 &\n```\n\n"
            "    python benchmarks/sampler.py --iters=3   # a comment --not_a_flag\n")
    found = {}
    for fragment in code_fragments(text):
        for match in SCRIPT.finditer(fragment):
            found[match.group(1)] = [t for t in tokens(fragment[match.end():]) if t.startswith("--")]
    assert found == {"rl/evaluate.py": ["--task=navigation", "--methods=maml"],
                     "experiments/omniglot.py": ["--num_ways=20", "--num_shots=5"],
                     "benchmarks/sampler.py": ["--iters=3"]}
