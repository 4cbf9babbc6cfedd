"""docs/api.md documents every public name (its examples run as doctests: docs/ is collected)."""

import inspect
import re
from pathlib import Path

import pytest

import tnsim
import tnsim.cli
import tnsim.experiments

DOC = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()

SUBMODULES = ["nn", "baselines", "plot", "checkpoints", "data", "algebra", "errors"]


def public_names(module) -> set[str]:
    """``__all__`` plus the functions and classes the module defines without a leading ``_``."""
    defined = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__
    }
    return set(getattr(module, "__all__", ())) | defined


def mentioned(qualified: str) -> bool:
    return re.search(re.escape(qualified) + r"(?![\w])", DOC) is not None


@pytest.mark.parametrize("name", sorted(set(tnsim.__all__) | {"slice"}))
def test_top_level_name_documented(name):
    assert mentioned(f"tnsim.{name}"), f"tnsim.{name} is not in docs/api.md"


@pytest.mark.parametrize("module", SUBMODULES)
def test_submodule_names_documented(module):
    mod = getattr(tnsim, module)

    def documented(name):  # as tnsim.module.name, or as tnsim.name where it is re-exported
        same = getattr(tnsim, name, None) is getattr(mod, name)
        return mentioned(f"tnsim.{module}.{name}") or (same and mentioned(f"tnsim.{name}"))

    missing = sorted(n for n in public_names(mod) if not documented(n))
    assert not missing, f"docs/api.md does not mention {', '.join(f'tnsim.{module}.{n}' for n in missing)}"


def test_experiments_documented():
    for name in tnsim.experiments.__all__:
        assert mentioned(f"tnsim.experiments.{name}")
    for name in tnsim.experiments.NAMES:
        assert mentioned(f"tnsim.experiments.{name}.run")


def test_cli_commands_and_flags_documented():
    parser = tnsim.cli.parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == {"demo", "experiment", "compare", "matrix", "cost"}
    for command, p in sub.choices.items():
        assert mentioned(f"tnsim {command}"), command
        for action in p._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert mentioned(flag), f"tnsim {command} {flag} is not in docs/api.md"
