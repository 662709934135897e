"""The nlp-service command line: synth writes both files, evaluate prints the table and writes
the report and plot, a bad training file is one line and exit 2, chat answers on stdin."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.nlp_service.cli import app

runner = CliRunner()


def test_synth_writes_messages_and_dialogues(tmp_path):
    r = runner.invoke(
        app, ["synth", "--out", str(tmp_path), "--per-intent", "3", "--dialogues", "4"]
    )
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "messages.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 24 and "intent" in json.loads(lines[0])
    assert len((tmp_path / "dialogues.jsonl").read_text().splitlines()) == 4


def test_a_bad_training_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "intent": "greeting"}\n{"text": "", "intent": "greeting"}\n')
    r = runner.invoke(app, ["train", "--data", str(bad), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2
    assert "empty or missing text" in r.output and "bad.jsonl:2" in r.output
    assert not (tmp_path / "m").exists()


@pytest.mark.xdist_group("nlp_model")
def test_evaluate_and_chat(trained, tmp_path):
    r = runner.invoke(app, ["evaluate", str(trained["model"]), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "card_lost_or_stolen" in r.output
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["n"] == 146 and (tmp_path / "ev" / "confusion.png").stat().st_size > 1000
    chat = runner.invoke(
        app,
        ["chat", str(trained["model"]), "--store", str(tmp_path / "c.sqlite")],
        input="hello\nwhere is my order 12345\n\n",
    )
    assert chat.exit_code == 0, chat.output
    assert chat.output.count("bot> ") == 2
