"""`python -m demo.train`: synthetic features, CTMWA and late fusion trained through ctmwa_training.train, one table."""

from __future__ import annotations

from demo.train import main as demo_main


def test_demo_prints_both_modes(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path), "--posts", "300", "--dim", "16", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "CTMWA" in out and "late fusion" in out and "test accuracy, every text missing" in out
    assert (tmp_path / "meta" / "model.safetensors").is_file() and (tmp_path / "late_fusion" / "metrics.json").is_file()
