"""The tutorial docs/custom-networks.md runs as written."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "custom-networks.md"


def test_custom_networks_tutorial_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 5
    namespace: dict = {}
    torch.manual_seed(0)
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "Network('spec'" in out and "Comparison(" in out
