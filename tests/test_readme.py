"""The README's quick tour and the docs cannot rot: every `fastadapt` command in their shell blocks parses
with the real command line (subcommand, flags, choices, numbers), every benchmark script they run exists
and has the flags given, every preset they name is shipped, every Python block compiles (the sinusoid ones
run on a tiny budget), every JSON block parses, every link to a file or a heading resolves, and the demo
prints the table the README shows, row for row."""
import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from fastadapt.cli import build_parser, main
from fastadapt.config.presets import preset_names
from episode_helpers import write_glyph_folder  # the tests directory is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
SHELL = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
#: Names that look like presets but are not: `fastadapt bench` benchmarks.
NOT_PRESETS = {"rl-speed", "rollout-speed"}
PRESET_NAME = re.compile(r"(?<![\w/.#-])((?:omniglot|sinusoid|rl)-[a-z0-9+]+(?:-[a-z0-9+]+)*)")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(match.group(1).lower(), match.group(2)) for match in FENCE.finditer(text)]


def shell_commands(body: str) -> tuple[list[list[str]], list[str]]:
    """The simple commands of a shell block (continuations joined, comments dropped, split at && ; | &), and
    the bodies of its here-documents."""
    lines, heredocs, commands = body.replace("\\\n", " ").split("\n"), [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        marker = HEREDOC.search(line)
        if marker:
            end = next(j for j in range(i, len(lines)) if lines[j].strip() == marker.group(1))
            heredocs.append("\n".join(lines[i:end]))
            line, i = line[:marker.start()], end + 1
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        command: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                commands.append(command)
                command = []
            else:
                command.append(token)
        commands.append(command)
    return [c for c in commands if c], heredocs


def fastadapt_argv(command: list[str]) -> list[str] | None:
    """The arguments after `fastadapt` (also `python -m fastadapt`, `torchrun ... -m fastadapt`), or None."""
    if command[0] == "fastadapt":
        return command[1:]
    for i in range(len(command) - 1):
        if command[i:i + 2] == ["-m", "fastadapt"] and command[0] in ("python", "python3", "torchrun"):
            return command[i + 2:]
    return None


def benchmark_sources(script: Path) -> str:
    """The source of a benchmark script and of the fastadapt.benchmarks module it wraps."""
    source = script.read_text()
    wrapped = re.search(r"from fastadapt\.benchmarks\.(\w+) import", source)
    if wrapped:
        source += (ROOT / "src" / "fastadapt" / "benchmarks" / f"{wrapped.group(1)}.py").read_text()
    return source


def unknown_flags(arguments: list[str], source: str) -> list[str]:
    return [a.split("=")[0] for a in arguments if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]


def strict_parser() -> argparse.ArgumentParser:
    """`fastadapt`'s parser, refusing abbreviated flags: the docs spell every flag in full, so that renaming
    `--cell-channels` to `--cell-channel-count` cannot leave `--cell-channel` in the docs parsing."""
    parser = build_parser()
    for each in (parser, *parser._subparsers._group_actions[0].choices.values()):
        each.allow_abbrev = False
    return parser


def check_fastadapt(argv: list[str]) -> str | None:
    """None if the command line parses as `fastadapt` parses it (and names a shipped preset and existing
    benchmark flags), else what is wrong."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = strict_parser().parse_args(argv)
    except SystemExit as exit:
        return None if exit.code == 0 else stderr.getvalue().strip() or f"exit status {exit.code}"
    if args.command == "train" and args.preset and not args.preset.endswith((".yaml", ".yml")) \
            and not args.preset.isupper() and args.preset not in preset_names():  # PRESET: a placeholder
        return f"no shipped preset {args.preset!r}"
    if args.command == "bench":
        module = ROOT / "src" / "fastadapt" / "benchmarks" / f"{args.benchmark.replace('-', '_')}.py"
        unknown = unknown_flags(args.args, module.read_text())
        if unknown:
            return f"fastadapt bench {args.benchmark} has no {', '.join(unknown)}"
    return None


def check_script(command: list[str]) -> str | None:
    """`python benchmarks/X.py ...`: the script exists and takes the flags given."""
    script = next((ROOT / a for a in command[1:] if a.startswith("benchmarks/") and a.endswith(".py")), None)
    if script is None:
        return None
    if not script.is_file():
        return f"{script.relative_to(ROOT)} does not exist"
    unknown = unknown_flags(command[command.index(str(script.relative_to(ROOT))) + 1:], benchmark_sources(script))
    return f"{script.relative_to(ROOT)} has no {', '.join(unknown)}" if unknown else None


def command_problems(text: str) -> tuple[list[str], list[list[str]]]:
    """What is wrong with the shell blocks of a document, and every fastadapt command line found."""
    problems, found = [], []
    for language, body in code_blocks(text):
        if language not in SHELL:
            continue
        commands, heredocs = shell_commands(body)
        for command in commands:
            argv = fastadapt_argv(command)
            problem = check_script(command) if argv is None and command[0].startswith("python") else None
            if argv is not None:
                found.append(argv)
                problem = check_fastadapt(argv)
            if problem:
                problems.append(f"`{shlex.join(command)}`: {problem}")
        for heredoc in heredocs:
            problems += python_problems(heredoc, "a here-document")
    return problems, found


def inline_problems(text: str) -> list[str]:
    """The same checks for commands in `inline code` outside the blocks; `fastadapt eval` alone names a
    command (which must exist), and spans with ..., [ or < are templates, not command lines."""
    problems = []
    commands = build_parser()._subparsers._group_actions[0].choices
    for span in re.findall(r"`((?:fastadapt [a-z]|python benchmarks/)[^`]*)`", FENCE.sub("", text)):
        if any(mark in span for mark in ("...", "[", "<")):
            continue
        command = shlex.split(span)
        if command[0] == "fastadapt" and len(command) == 2:
            problem = None if command[1] in commands else f"no command {command[1]!r}"
        else:
            argv = fastadapt_argv(command)
            problem = check_fastadapt(argv) if argv is not None else check_script(command)
        if problem:
            problems.append(f"`{span}`: {problem}")
    return problems


def python_problems(source: str, where: str) -> list[str]:
    try:
        compile(source, where, "exec")
    except SyntaxError as error:
        return [f"{where} does not compile: {error}"]
    return []


def block_problems(text: str) -> list[str]:
    problems = []
    for i, (language, body) in enumerate(code_blocks(text)):
        if language == "python":
            problems += python_problems(body, f"python block {i}")
        elif language == "json":
            try:
                json.loads(body)
            except json.JSONDecodeError as error:
                problems.append(f"json block {i} does not parse: {error}")
    return problems


def preset_problems(text: str) -> list[str]:
    names = set(PRESET_NAME.findall(text)) - NOT_PRESETS
    return [f"no shipped preset {name!r}" for name in sorted(names - set(preset_names()))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def anchors(text: str) -> set[str]:
    without_code = FENCE.sub("", text)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", without_code, re.M)}


def link_problems(document: Path, text: str) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            problems.append(f"{document.name} links to {target}, which does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            problems.append(f"{document.name} links to {target}: no such heading")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_command_parses_and_every_script_and_flag_exists(document):
    problems = command_problems(document.read_text())[0] + inline_problems(document.read_text())
    assert not problems, "\n".join(problems)


def test_the_readme_tour_covers_every_user_command():
    _, found = command_problems(README.read_text())
    used = {argv[0] for argv in found if argv}
    assert {"demo", "train", "eval", "predict", "plot", "serve"} <= used, used
    assert len(found) >= 20, f"only {len(found)} fastadapt commands found in the README's shell blocks"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_preset_named_is_shipped_and_every_block_compiles(document):
    text = document.read_text()
    problems = preset_problems(text) + block_problems(text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_resolves(document):
    problems = link_problems(document, document.read_text())
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_renamed_or_abbreviated_flag_a_wrong_value_a_missing_preset_and_a_broken_link(tmp_path):
    text = README.read_text()
    for old, new in (("--k-shot 1", "--k-shots 1"), ("--k-shot 1", "--k-shot one"),
                     ("fastadapt demo\n", "fastadapt demo --fast\n"), ("--cell-channels 8", "--cell-channel 8"),
                     ("fastadapt train omniglot-protonet-cpu ", "fastadapt train omniglot-protonet-gpu ")):
        assert old in text and command_problems(text.replace(old, new))[0], f"{new!r} went unnoticed"
    assert preset_problems(text.replace("omniglot-protonet-cpu", "omniglot-protonet-tpu"))
    assert len(inline_problems("`fastadapt predicts` and `fastadapt train sinusoid-maml --meta-lrate 1`")) == 2
    bench = "```bash\nfastadapt bench speed --layout-controls\npython benchmarks/rl_nav2d.py --out runs\n```\n"
    assert len(command_problems(bench)[0]) == 2
    assert block_problems("```python\nfor x in range(3)\n    pass\n```\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n## Sinusoid regression\n")
    page = tmp_path / "README.md"
    assert not link_problems(page, "[r](docs/results.md#sinusoid-regression)")
    assert link_problems(page, "[r](docs/result.md)") and link_problems(page, "[r](docs/results.md#omniglot)")


def test_the_demo_prints_the_table_the_readme_shows(tmp_path, capsys):
    shown = next(body for language, body in code_blocks(README.read_text())
                 if not language and body.startswith("Sinusoid regression"))
    assert main(["demo", "--iterations", "2", "--output-dir", str(tmp_path / "demo"), "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().split("\n")
    expected = shown.strip().split("\n")
    assert printed[0] == expected[0]  # the title
    assert printed[1].split() == expected[1].split()  # the columns: MAML, pretrained
    for ours, theirs in zip(printed[2:], expected[2:]):  # rows, in order: 0 steps, 1 step, 10 steps, figure, time
        assert re.split(r"\s{2,}|: ", ours)[0] == re.split(r"\s{2,}|: ", theirs)[0]
    assert len(printed) == len(expected) and (tmp_path / "demo" / "sinusoid.png").is_file()


def test_the_readme_demo_figures_are_the_measured_ones_in_the_results():
    """The figures a 2-iteration demo cannot reproduce: the README's table is docs/results.md's demo table, figure
    for figure, and its time the one measured there."""
    shown = next(body for language, body in code_blocks(README.read_text())
                 if not language and body.startswith("Sinusoid regression"))
    results = (README.parent / "docs" / "results.md").read_text()
    demo = results[results.index("**The demo**"):results.index("**Full budget**")]
    measured = {row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")[2:4]]
                for row in demo.splitlines() if re.match(r"\| \d+ steps? \|", row)}
    readme = {match[0]: [match[1], match[2]] for match in
              re.findall(r"^(\d+ steps?)\s{2,}(\S+ ± \S+)\s{2,}(\S+ ± \S+)$", shown, re.M)}
    assert readme == measured and len(readme) == 3
    seconds = re.search(r"total time: ([\d.]+) s", shown)[1]
    assert f"{seconds} s wall" in demo


def test_the_python_api_snippets_run_on_a_tiny_budget(tmp_path, monkeypatch):
    blocks = [body for language, body in code_blocks(README.read_text()) if language == "python"]
    loop = next(b for b in blocks if "SinusoidTasks" in b)
    preset = next(b for b in blocks if "load_preset" in b)
    monkeypatch.chdir(tmp_path)
    for block, budget in ((loop, ("range(20_000)", "range(2)")), (preset, ("iterations=5000", "iterations=2"))):
        assert budget[0] in block, f"the README's snippet no longer holds {budget[0]}"
        namespace: dict = {}
        exec(compile(block.replace(*budget), "README.md", "exec"), namespace)
    assert namespace["result"].iterations == 2 and (tmp_path / "runs" / "msgd" / "best.pt").is_file()
    best = torch.load(tmp_path / "runs" / "msgd" / "best.pt", weights_only=False)["learner"]
    for name, value in namespace["learner"].state_dict().items():  # the best validation weights are the ones tested
        assert torch.equal(value, best[name]), name


#: What shrinks the tour's runs to seconds: tiny budgets and networks; evaluation on two episodes.
TINY_TRAINING = ["--iterations", "2", "--val-tasks", "2", "--test-tasks", "2", "--conv-channels", "8", "--no-progress"]


def tour_blocks(first: str, last: str) -> list[str]:
    """The shell blocks of the README's quick tour from the heading starting with ``first`` up to ``last``."""
    text = README.read_text()
    section = text[text.index(f"### {first}"):text.index(f"### {last}")]
    return [body for language, body in code_blocks(section) if language in SHELL]


def test_the_image_tour_runs_command_by_command_on_a_tiny_budget(tmp_path, monkeypatch, fake_omniglot):
    """Steps 2-6 of the quick tour (Omniglot, your folder, evaluate, predict, plot), in order, as the README
    writes them: only the budgets shrink, the folder is a synthetic one and Omniglot a random stand-in."""
    pytest.importorskip("sklearn", reason="the digits domain needs the digits extra (scikit-learn)")
    folder = write_glyph_folder(tmp_path / "my-images", classes=25, images=20)  # 5 val and test classes; 1 + 15 images
    monkeypatch.chdir(tmp_path)
    ran = []
    for body in tour_blocks("2.", "7."):
        commands, heredocs = shell_commands(body)
        for script in heredocs:  # the tour's Python here-documents (writing digits as image files)
            exec(compile(script, "README.md", "exec"), {"__name__": "__main__"})
        for command in commands:
            argv = fastadapt_argv(command)
            if argv is None:  # pip install ...
                continue
            argv = [str(folder) if arg == "~/my-images" else arg for arg in argv]
            if argv[0] == "train":  # a preset writes to runs/<preset>, which later steps read
                argv += TINY_TRAINING + ([] if argv[1] in preset_names() else ["--output-dir", "runs/folder"])
            elif argv[0] == "eval":
                argv += ["--test-tasks", "2"]
            assert main(argv) == 0, f"the tour's `fastadapt {' '.join(argv)}` failed"
            ran.append(argv[0])
    assert ran.count("train") == 2 and {"eval", "predict", "plot"} <= set(ran)
    assert (tmp_path / "results.json").is_file()
    assert (tmp_path / "runs" / "omniglot-protonet-cpu" / "learning_curves.png").is_file()
