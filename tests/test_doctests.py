"""Run the docstring examples of the installed package."""

import doctest
import importlib

import pytest

MODULES = ["qatcore.config", "qatcore.observer", "qatcore.fake_quantize", "qatcore.dynamic",
           "qatcore.mixed_precision", "qatcore.histogram", "qatcore.model.sequential"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
