"""Help for the command line: every option's help text (where the parser does not set one) and a formatter
that shows each option's default.

Kept apart from the parser so that help wording lives in one table: ``apply_help(parser)`` fills the help of
every option that has none from :data:`HELP` (keyed by option string) and gives every (sub)parser the
:class:`HelpFormatter`.
"""

from __future__ import annotations

import argparse

#: help text by option string, used where ``add_argument`` gave none
HELP = {
    "--out": "output folder",
    "--preset": "training preset: smoke (seconds), cpu (minutes on a laptop) or paper (GPU sizes)",
    "--seed": "random seed (sampling, initialisation, bootstrap)",
    "--device": "auto, cpu, cuda or cuda:N",
    "--arch": "architecture (see `geoprobe tunnel list`)",
    "--steps": "optimisation steps (default: the preset's)",
    "--batch-size": "sequences per optimisation step (default: the preset's)",
    "--lr": "peak learning rate (default: the preset's)",
    "--n": "number of sequences or prompts",
    "--quiet": "no progress bars",
    "--tasks": "wind-tunnel tasks of the grid",
    "--archs": "architectures of the grid",
    "--seeds": "seeds per (task, architecture) cell",
    "task": "wind-tunnel task (see `geoprobe tunnel list`)",
    "run": "wind-tunnel run folder (written by `geoprobe tunnel train`)",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to every option whose default is a
    value (not None, not a False flag) and whose help does not already mention its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is argparse.SUPPRESS or default is False
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(x) for x in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown})".strip()


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def apply_help(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Fill missing option help from :data:`HELP` and install :class:`HelpFormatter` on every parser."""
    for p in [parser, *_subparsers(parser)]:
        p.formatter_class = HelpFormatter
        for action in p._actions:
            if action.help is None:
                key = action.option_strings[-1] if action.option_strings else action.dest
                if key in HELP:
                    action.help = HELP[key]
    return parser


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """``"prog: option"`` for every argument (in any subcommand) that has no help text."""
    out = []
    for p in [parser, *_subparsers(parser)]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help:
                out.append(f"{p.prog}: {'/'.join(action.option_strings) or action.dest}")
    return out
