"""The decode path is warmed when the Classifier starts, not by the first request."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PLUGINS = ("PIL.JpegImagePlugin", "PIL.PngImagePlugin", "PIL.WebPImagePlugin")


def test_warm_decoders_loads_every_accepted_decoder() -> None:
    # A fresh interpreter: another test may already have loaded the plugins in this one.
    code = textwrap.dedent(
        f"""
        import sys
        from service.classify import warm_decoders
        before = [m for m in {PLUGINS!r} if m in sys.modules]
        warm_decoders()
        after = [m for m in {PLUGINS!r} if m in sys.modules]
        print(before, after)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == f"[] {list(PLUGINS)!r}"


def test_classifier_warms_decoders_in_its_pool(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from service import classify
    from service.metrics import Metrics
    from service.settings import Settings

    calls: list[str] = []
    monkeypatch.setattr(classify, "warm_decoders", lambda: calls.append("warm"))
    classifier = classify.Classifier(Settings(), None, Metrics())  # type: ignore[arg-type]
    classifier.close()  # waits for the pool: the warm-up has run
    assert calls == ["warm"]
