"""The README's first quick-start command: `pollhook demo` must work as written."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import pollhook

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_demo_config_is_the_repository_sources_yaml() -> None:
    bundled = ROOT / "src" / "pollhook" / "demo_sources.yaml"
    assert bundled.read_text() == (ROOT / "sources.yaml").read_text()


def test_repository_sources_yaml_is_valid() -> None:
    result = pollhook("check", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_demo_shows_changes_arriving_signed_and_exits_zero() -> None:
    result = pollhook("demo", "--duration", "7", cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receiver | item.created" in result.stdout
    summary = re.search(
        r"(\d+) changes upstream, (\d+) webhooks received, (\d+) signatures verified",
        result.stdout,
    )
    assert summary, result.stdout
    changes, received, verified = map(int, summary.groups())
    assert changes >= 1 and received >= changes and verified == received
    assert "Traceback" not in result.stdout + result.stderr


def test_demo_still_works_after_sources_yaml_became_the_users_own(tmp_path: Path) -> None:
    """The quick start's next step is editing ./sources.yaml: the demo must not depend on it."""
    (tmp_path / "sources.yaml").write_text(
        "sources:\n  - name: jira\n    url: https://jira.example.com/rest/api/2/search\n"
        "    interval: 5m\n    items: issues\n    key: key\n"
    )  # the user's own: another API, no subscriber
    result = pollhook("demo", "--duration", "4", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receiver | item.created" in result.stdout and "signature ok" in result.stdout
    assert "jira" not in result.stdout + result.stderr
    assert not (tmp_path / "pollhook.db").exists()  # the demo's state is thrown away

    other = pollhook("demo", "--duration", "4", "-c", str(tmp_path / "sources.yaml"), cwd=ROOT)
    assert other.returncode == 2 and "the demo needs a subscriber" in other.stderr
