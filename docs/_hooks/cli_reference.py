"""mkdocs hook: the CLI reference (docs/reference/cli.md) generated from the argparse parsers at build time.

Each command's parser is built by its own `main` (ctmwa-batch, ctmwa-train and its subcommands, ctmwa-export), caught
as it starts parsing, and walked for subcommands; every parser's `--help` text goes on the page. Nothing is copied by
hand, so a new flag appears on the next build. The page holds the marker `<!-- cli-reference -->`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MARKER = "<!-- cli-reference -->"


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@contextmanager
def _catch_parsers() -> Iterator[None]:
    """While inside: a parser that starts parsing raises _Built carrying itself instead."""
    original = argparse.ArgumentParser.parse_known_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Built(self)

    argparse.ArgumentParser.parse_known_args = capture  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]


def parser_of(main: Callable[[list[str]], int], argv: list[str]) -> argparse.ArgumentParser:
    """The parser `main(argv)` builds, without running anything."""
    with _catch_parsers():
        try:
            main(argv)
        except _Built as built:
            return built.parser
    raise RuntimeError(f"{main.__module__}.main({argv}) parsed nothing")


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser, then every subcommand's parser, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from walk(sub)


def parsers() -> Iterator[argparse.ArgumentParser]:
    from ctmwa_batch.cli.main import main as batch_main
    from ctmwa_export.cli import main as export_main
    from ctmwa_training.cli import SUBCOMMANDS as TRAIN_SUBCOMMANDS
    from ctmwa_training.cli import main as train_main

    yield from walk(parser_of(batch_main, []))
    yield from walk(parser_of(train_main, []))
    for name in TRAIN_SUBCOMMANDS:
        yield from walk(parser_of(train_main, [name]))
    yield from walk(parser_of(export_main, []))


def render() -> str:
    """Every command's `--help`, one section each, 110 columns wide whatever the terminal."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps help to the terminal's width
    try:
        return "\n".join(f"## `{p.prog}`\n\n```text\n{p.format_help().rstrip()}\n```\n" for p in parsers())
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
