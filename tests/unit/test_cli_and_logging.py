"""CLI polish (help on every option with its default, --version, tables) and logging hygiene (the library logs
through the "geoprobe" logger and leaves other libraries' global settings as it found them)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import geoprobe
from geoprobe.cli import build_parser, main
from geoprobe.cli_help import options_without_help
from geoprobe.report_text import summary_table


def test_every_option_has_help():
    assert options_without_help(build_parser()) == []


def _help(*argv: str) -> str:
    parser = build_parser()
    for name in argv:
        parser = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
                      ).choices[name]
    return " ".join(parser.format_help().split())


def test_help_shows_defaults_but_not_empty_ones():
    text = _help("tunnel", "train")
    assert "(default: cpu)" in text and "(default: transformer)" in text and "(default: auto)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: bijection hmm recall)" in _help("tunnel", "compare")
    assert "(default: 1.0 10.0)" in _help("gradients")


def test_version_flag():
    res = subprocess.run([sys.executable, "-m", "geoprobe", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"geoprobe {geoprobe.__version__}"


def test_summary_is_printed_as_an_aligned_table():
    summary = {"verdict": {"criteria_passed": 2, "of": 3, "label": "partial",
                           "by_criterion": {"value_manifold": False, "key_orthogonality": True}},
               "value_manifold": {"pc1_share": 0.25, "n": 48, "rho_ci": [0.1, 0.2], "paper_claim": "x"},
               "ablation": {"every_layer_bypass_over_10x": True}}
    assert summary_table(summary) == (
        "verdict: partial: 2 of 3 criteria (value manifold fails, key orthogonality passes)\n"
        "probe           reading                      value\n"
        "--------------  ---------------------------  ----------\n"
        "value_manifold  pc1 share                    0.25\n"
        "                n                            48\n"
        "ablation        every layer bypass over 10x  yes\n")


def test_verbose_cli_logs_through_the_geoprobe_logger(capsys):
    assert main(["-v", "tunnel", "list"]) == 0
    assert logging.getLogger("geoprobe").level == logging.INFO
    assert main(["tunnel", "list"]) == 0
    assert logging.getLogger("geoprobe").level == logging.WARNING
    logging.getLogger("geoprobe").warning("hello from geoprobe")
    assert "geoprobe: hello from geoprobe" in capsys.readouterr().err


def test_report_save_logs_to_the_geoprobe_logger(tmp_path, caplog):
    from geoprobe.report import Report

    with caplog.at_level(logging.INFO, logger="geoprobe"):
        Report("t", summary={"a": 1.0}).save(tmp_path / "r")
    assert [r.name for r in caplog.records] == ["geoprobe"] and "wrote report" in caplog.records[0].message


@pytest.fixture
def noisy_globals():
    """Set transformers to INFO with progress bars on and TransformerLens's logger to DEBUG; restore after."""
    import transformers.utils.logging as tfl

    tl = logging.getLogger("transformer_lens")
    saved = (tfl.get_verbosity(), tfl.is_progress_bar_enabled(), tl.level)
    tfl.set_verbosity_info()
    tfl.enable_progress_bar()
    tl.setLevel(logging.DEBUG)
    yield tfl, tl
    tfl.set_verbosity(saved[0])
    (tfl.enable_progress_bar if saved[1] else tfl.disable_progress_bar)()
    tl.setLevel(saved[2])


def test_loading_a_model_leaves_global_logging_settings_alone(noisy_globals, tiny_model_dirs):
    from geoprobe.backends import load_model

    tfl, tl = noisy_globals
    handle = load_model(tiny_model_dirs["gpt2"], backend="transformer_lens", device="cpu")
    assert handle.info.n_layers == 2
    assert tfl.get_verbosity() == logging.INFO
    assert tfl.is_progress_bar_enabled()
    assert tl.level == logging.DEBUG


def test_saving_checkpoints_leaves_progress_bars_on(noisy_globals, tmp_path):
    from geoprobe.models import ARCHS
    from geoprobe.models.architectures import ModelSize
    from geoprobe.models.checkpoint import save_model_folder
    from geoprobe.tasks import make_task

    tfl, _ = noisy_globals
    task = make_task("bijection", V=4, L=3)
    model = ARCHS.get("transformer").build(task.vocab_size, ModelSize(1, 1, 8, task.seq_len), seed=0)
    save_model_folder(tmp_path / "m", "transformer", model, task)
    assert (tmp_path / "m" / "config.json").exists()
    assert tfl.is_progress_bar_enabled() and tfl.get_verbosity() == logging.INFO


def test_quiet_libraries_is_quiet_inside_and_restores_after_an_error(noisy_globals):
    from geoprobe.logs import quiet_libraries

    tfl, tl = noisy_globals
    with pytest.raises(RuntimeError), quiet_libraries():
        assert tfl.get_verbosity() == logging.ERROR and not tfl.is_progress_bar_enabled()
        assert tl.level == logging.ERROR
        raise RuntimeError("boom")
    assert tfl.get_verbosity() == logging.INFO and tfl.is_progress_bar_enabled() and tl.level == logging.DEBUG
