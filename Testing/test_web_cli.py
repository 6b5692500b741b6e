"""``dkuxnet web``: safe defaults, and one clear message where the [web] extra is missing."""

from __future__ import annotations

import pytest

import DKUXNetSegmentWeb
from dkuxnet.cli import build_parser, main
from dkuxnet.commands import web


def test_defaults_bind_the_loopback_address() -> None:
    args = build_parser(only="web").parse_args(["web"])
    assert (args.host, args.port, args.data, args.model, args.device) == (
        "127.0.0.1",
        8080,
        ".",
        None,
        "auto",
    )
    assert web.is_loopback(args.host)
    assert web.is_loopback("localhost") and web.is_loopback("::1")
    assert not web.is_loopback("0.0.0.0") and not web.is_loopback("example.org")


def test_missing_extra_is_one_clear_error(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(DKUXNetSegmentWeb, "missing_modules", lambda: ["trame-slicer"])
    assert main(["web", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "dkuxnet web: error:" in err
    assert "trame-slicer missing" in err and 'pip install -e ".[web]"' in err


def test_missing_data_folder(capsys, tmp_path) -> None:
    if not _web_installed():
        pytest.skip("the [web] extra is not installed (bash .ci/web_test_deps installs it)")
    assert main(["web", "--data", str(tmp_path / "nope")]) == 1
    assert "data folder not found" in capsys.readouterr().err


def test_missing_modules_names_packages(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "trame_slicer" else real(name, *a),
    )
    assert "trame-slicer" in DKUXNetSegmentWeb.missing_modules()


def _web_installed() -> bool:
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None for name in DKUXNetSegmentWeb.REQUIRED_MODULES
    )
