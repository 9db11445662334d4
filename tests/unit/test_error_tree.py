"""One error tree: every exception class Esper defines derives from ``EsperError`` and prints as one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import contracts
import services
from services.cli import main
from services.core.errors import EsperError, InputError


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for package in (contracts, services):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue  # running it is the command itself
            module = importlib.import_module(info.name)
            found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                      if issubclass(cls, BaseException) and cls.__module__ == module.__name__]
    return found


def test_every_exception_esper_defines_derives_from_esper_error():
    exceptions = defined_exceptions()
    assert len(exceptions) > 20  # the walk reached the components
    assert [f"{cls.__module__}.{cls.__name__}" for cls in exceptions if not issubclass(cls, EsperError)] == []


def test_a_message_is_one_line():
    assert str(InputError("config.yaml:\n  epochs: must be >= 1\n")) == "config.yaml: epochs: must be >= 1"


def test_the_cli_prints_any_esper_error_as_one_line(tmp_path, capsys):
    blueprint = tmp_path / "bad.yaml"
    blueprint.write_text("name: [unclosed\n")
    assert main(["blueprint", "submit", str(blueprint)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("esper: error: ") and err.count("\n") == 1 and "bad.yaml is not valid YAML" in err, err
