"""The docs a user is sent to exist, and the configuration reference names every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pollhook.config import load_config
from pollhook.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_somewhere(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", page.read_text()):
        path, anchor = target
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {path} does not exist"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: no #{anchor} in {dest.name}"


def test_the_files_that_cite_docs_cite_ones_that_exist() -> None:
    for cited_by in (ROOT / "sources.yaml", ROOT / "src" / "pollhook" / "demo_sources.yaml"):
        for doc in re.findall(r"docs/[\w-]+\.md", cited_by.read_text()):
            assert (ROOT / doc).exists(), f"{cited_by.name} cites {doc}"
    unit = (ROOT / "contrib" / "systemd" / "pollhook.service").read_text()
    for page, section in re.findall(r'see (README\.md|docs/[\w-]+\.md), "([^"]+)"', unit):
        assert f"## {section}\n" in (ROOT / page).read_text(), f"the unit cites {page}: {section}"
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running under systemd\n", 1)[1].split("\n## ", 1)[0]
    for step in ("cp contrib/systemd/pollhook.service", "/etc/pollhook", "LoadCredential=",
                 "systemctl daemon-reload", "enable --now pollhook", "journalctl -u pollhook",
                 "sudo pollhook status"):  # fmt: skip
        assert step in section, step


def test_the_reference_example_is_a_valid_config(tmp_path: Path) -> None:
    block = REFERENCE.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "sources.yaml"
    path.write_text(block)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert load_config(path, env={"HELPDESK_SECRET": secret}).subscribers[0].secrets


# Each place that takes keys, and a config that puts an unknown key `zzzz` there: the error
# lists the keys that place knows, so every key pollhook accepts is found without a list here.
SOURCE = "sources:\n  - name: a\n    url: http://x/\n    interval: 1s\n"
PLACES = {
    "top level": "zzzz: 1\n" + SOURCE,
    "http": "http: {zzzz: 1}\n" + SOURCE,
    "retention": "retention: {zzzz: 1}\n" + SOURCE,
    "source": SOURCE + "    zzzz: 1\n",
    "subscriber": SOURCE + "subscribers:\n  - name: s\n    url: http://x/\n    zzzz: 1\n",
    "pagination": SOURCE + "    pagination: {type: page, zzzz: 1}\n",
    "incremental": SOURCE + "    incremental: {cursor: c, param: p, zzzz: 1}\n",
    "mass_delete": SOURCE + "    mass_delete: {zzzz: 1}\n",
    "auth": SOURCE + "    auth: {zzzz: 1}\n",
    "auth.basic": SOURCE + "    auth: {basic: {zzzz: 1}}\n",
}


@pytest.mark.parametrize("place", list(PLACES))
def test_the_reference_names_every_key(tmp_path: Path, place: str) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(PLACES[place])
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    known = re.search(r"known keys: ([^)]*)\)", str(error.value))
    assert known, str(error.value)
    text = REFERENCE.read_text()
    for key in known.group(1).split(", "):
        assert re.search(rf"[`.]{re.escape(key)}[`:]", text), (place, key)  # `key`, `a.key`
