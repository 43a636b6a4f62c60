"""The web console in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium) against ``freshindex serve``'s app run by uvicorn on a loopback port, over a copy of
the query kit's fixture index (built by the batch pipeline with the FAKE embedder).

It loads, shows the table's runs, a search returns hits with citations and per-hit scores,
and a diff between two versions lists the changed documents. Screenshots are saved under
$FRESHINDEX_ARTIFACTS (default: the test's tmp folder); their paths are printed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from freshindex import store
from freshindex.query.api import create_app
from freshindex.query.config import load_query_config
from freshindex.query.service import QueryService
from freshindex.testing import RECORDS, copy_index
from tests import serving

CHROMIUM = os.environ.get("FRESHINDEX_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FRESHINDEX_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, config) of the console over a fixture copy with one more version: the
    update of notes/ducks.md."""
    cfg = copy_index("fake-hash", tmp_path_factory.mktemp("console"))
    table = store.open_chunks(store.connect(cfg.db), cfg.table)
    table.update(where="doc_id = 'notes/ducks.md'", values={"content_hash": "edited-by-test"})
    qcfg = load_query_config(overrides={"gateway.cache.enabled": False}, environ={})
    with serving.served(create_app(QueryService(cfg, qcfg), environ={})) as port:
        yield f"http://127.0.0.1:{port}", cfg


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"the console test needs Debian's chromium and chromedriver; missing: {missing} "
            "(apt-get install chromium chromium-driver; .ci/run installs them)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="freshindex-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("FRESHINDEX_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def shot(driver, artifacts: Path, name: str) -> None:
    path = artifacts / f"console-{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def navigate(browser, element) -> None:
    """Click ``element`` and wait until the page it leads to replaced this one (a click
    returns before the new page loads: reading at once would read the old page)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # chromedriver's other answer for a node of the page that was just replaced
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(browser, 30).until(replaced)


def test_the_console_shows_runs_search_hits_with_citations_and_a_diff(served, browser, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, cfg = served
    db = store.connect(cfg.db)
    runs = store.read_runs(db, cfg.table)

    browser.get(f"{base}/ui")
    assert "freshindex" in browser.title
    assert browser.find_element(By.ID, "health").text == "healthy"
    shown = browser.find_element(By.ID, "runs").text
    assert all(r["run_id"] in shown for r in runs), shown
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")) == len(runs)
    shot(browser, artifacts, "overview")

    navigate(browser, browser.find_element(By.ID, "nav-search"))
    browser.find_element(By.ID, "query").send_keys("pool timeout connection")
    Select(browser.find_element(By.ID, "mode")).select_by_value("hybrid")
    navigate(browser, browser.find_element(By.ID, "search-submit"))
    hits = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    assert hits, browser.page_source[:2000]
    first = hits[0]
    assert "guide/timeouts.md" in first.find_element(By.CSS_SELECTOR, ".citation").text
    scores = first.find_element(By.CSS_SELECTOR, ".scores").text
    assert "vector" in scores and "fts" in scores, scores
    shot(browser, artifacts, "search")

    # a filter that matches nothing the query would find first, and an as-of before the
    # records existed: no papers/ hit
    browser.get(f"{base}/ui/search?query=aspirin+fever&mode=fts&filter=doc_id+prefix+papers/")
    cites = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .citation")]
    assert cites and all("papers/" in c for c in cites), cites
    first_run = next(r for r in runs if r["kind"] == "batch")["run_id"]
    browser.get(f"{base}/ui/search?query=aspirin+fever&mode=fts&as_of={first_run}")
    cites = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .citation")]
    assert not any("papers/aspirin" in c for c in cites), cites

    browser.get(f"{base}/ui/versions")
    links = browser.find_elements(By.CSS_SELECTOR, "a.diff-link")
    assert links
    navigate(browser, links[0])  # newest version: the update of notes/ducks.md
    changes = browser.find_elements(By.CSS_SELECTOR, "#diff-result tr.change")
    assert [c.text.split()[:2] for c in changes] == [["updated", "notes/ducks.md"]]
    shot(browser, artifacts, "diff")

    batch_runs = [r["run_id"] for r in runs if r["kind"] == "batch"]
    browser.find_element(By.ID, "from_ref").clear()
    browser.find_element(By.ID, "from_ref").send_keys(batch_runs[0])
    browser.find_element(By.ID, "to_ref").clear()
    browser.find_element(By.ID, "to_ref").send_keys(batch_runs[1])
    navigate(browser, browser.find_element(By.ID, "diff-submit"))
    added = browser.find_elements(By.CSS_SELECTOR, "#diff-result tr.change.added")
    added_ids = sorted(a.find_element(By.TAG_NAME, "a").text for a in added)
    assert added_ids == sorted(r["_id"] for r in RECORDS)
    assert f"{len(RECORDS)} added" in browser.find_element(By.ID, "diff-counts").text

    navigate(browser, browser.find_element(By.LINK_TEXT, "papers/aspirin"))
    assert "in the table" in browser.find_element(By.ID, "doc").text
    history = browser.find_element(By.ID, "history").text
    assert "added" in history and batch_runs[1] in history
    shot(browser, artifacts, "explain")

    navigate(browser, browser.find_element(By.ID, "nav-errors"))
    assert browser.find_element(By.ID, "errors").is_displayed()
