"""The configuration: embedded defaults, the documented example, and refusals of bad files."""

from __future__ import annotations

import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from node.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_documents_every_setting_with_its_default() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    assert example == asdict(Config()), "config.example.toml and node/config.py disagree"


def test_no_config_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path) == Config()


def test_config_file_overrides_a_setting(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[ledger]\nbooks = "private"\n')
    assert load_config(tmp_path).ledger.books == "private"


@pytest.mark.parametrize(
    "text, words",
    [
        ("[ledger]\nbookz = 'open'\n", "unknown setting [ledger] bookz"),
        ("[legder]\n", "unknown section [legder]"),
        ("[ledger]\nbooks = 'secret'\n", "books must be"),
        ("[api]\nmax_batch = 'many'\n", "max_batch must be a whole number, got 'many'"),
        ("[node]\nlog_level = 'loud'\n", "log_level must be one of debug, info, warning"),
        ("[node]\npublic_url = 'not a url'\n", "public_url must be an http:// or https://"),
        ("[node]\npublic_url = 'http://'\n", "public_url must be an http:// or https://"),
        ("[api]\nhistory_page_max = 0\n", "history_page_max must be between 1"),
        ("[federation]\nmargin_ms = 0\n", "margin_ms must be at least 1000"),
        ("[node]\nlisten = 'localhost'\n", "must be HOST:PORT"),
        ("[node\n", "config.toml"),
    ],
)
def test_bad_config_is_refused_with_the_setting_named(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_config(tmp_path)
