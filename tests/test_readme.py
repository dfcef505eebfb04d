"""The README's promises that can drift: its two opening commands and the generated configuration reference."""

import re
from pathlib import Path

from usjepa.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(BIN\)/usjepa demo", makefile, flags=re.M)
    assert "torch==2.14.1 torchvision==0.29.1" in makefile


def test_configuration_reference_matches_the_schemas():
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- config-reference:start -->\n", 1)[1].split("<!-- config-reference:end -->", 1)[0]
    assert section == reference_markdown(), "run: python -m usjepa.config_reference to refresh README.md"
