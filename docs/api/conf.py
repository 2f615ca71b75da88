"""Sphinx configuration of the API reference, built from the docstrings.

Build: ``python -m sphinx -W --keep-going -b html docs/api docs/api/_build`` (tests/test_packaging.py
does this on every test run, so a docstring that does not render fails the tests).
"""

from __future__ import annotations

import inspect
import os
import textwrap
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import jupyter_plb

project = "jupyter_plb"
author = "jupyter_plb developers"
project_copyright = "2026, jupyter_plb developers"
release = version = jupyter_plb.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "both"  # the class docstring, then the __init__ one (its arguments)
autodoc_inherit_docstrings = False  # not ipywidgets' or traitlets' constructor notes
autodoc_default_options = {"members": True, "undoc-members": True}
html_theme = "alabaster"
html_theme_options = {
    "description": "A load balancer for Python tasks that lives inside Jupyter",
    "page_width": "1200px",
    "body_max_width": "none",
}
#: argparse wraps the magics' help to this width, whatever terminal runs the build.
os.environ["COLUMNS"] = "100"


class PlbMagicsHelp(SphinxDirective):
    """``.. plb-magics::``: the overview of ``%plb`` and every subcommand's help, from their parsers."""

    def run(self) -> list[nodes.Node]:
        from jupyter_plb.jupyter.magics import SUBCOMMANDS, PlbMagics

        sections: list[nodes.Node] = [_text_block(PlbMagics.plb.__doc__ or "")]
        for name, handler in SUBCOMMANDS.items():
            section = nodes.section(ids=[f"plb-{name}"])
            section += nodes.title(text=f"%plb {name}")
            # IPython's help formatter starts the usage with a reST "::" line: drop it
            section += _text_block(handler.parser.format_help().strip().removeprefix("::"))
            sections.append(section)
        return sections


def _text_block(text: str) -> nodes.literal_block:
    block = nodes.literal_block(text=textwrap.dedent(text).strip("\n"))
    block["language"] = "text"
    return block


def own_init_signature(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None, return_annotation: str | None
) -> tuple[str, None] | None:
    """Traitlets classes (the widgets) report ``HasTraits.__new__``'s ``(*args, **kwargs)``: show their __init__'s."""
    if what != "class" or "__init__" not in vars(obj) or not (signature or "").startswith("(*args"):
        return None
    init = inspect.signature(obj.__init__, eval_str=True)
    return str(init.replace(parameters=list(init.parameters.values())[1:], return_annotation=init.empty)), None


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("plb-magics", PlbMagicsHelp)
    app.connect("autodoc-process-signature", own_init_signature)
    return {"parallel_read_safe": True}
