"""The review page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, driven
with selenium) labels rationales by clicking and by keys, reloads, and finds the labels and the agreement
figure updated. Skips, saying why, where Chromium or its driver is absent (.ci/run installs them)."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from selfmotivated.review import LabelStore, ReviewConfig, ReviewServer, review_figures

from .test_review import SCRIPT, make_run, rids

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")


def _driver():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("headless Chromium test: no `chromium` and `chromedriver` on PATH "
                    "(Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("headless Chromium test: selenium is not installed (pip install -e .[test])")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tempfile.mkdtemp(prefix='sml-chromium-')}"):
        options.add_argument(arg)
    # The driver path is given, so selenium never looks for (or downloads) one of its own.
    return webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))


@pytest.fixture
def browser():
    driver = _driver()
    yield driver
    driver.quit()


def test_label_by_click_and_keys_then_reload(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = make_run(tmp_path / "run")
    ids = rids(run)
    server = ReviewServer(ReviewConfig(run=str(run), port=0, annotator="alice")).start()
    try:
        browser.get(server.url + "?dataset=toy_coin")
        wait = WebDriverWait(browser, 10)
        cards = browser.find_elements(By.CSS_SELECTOR, ".rat")
        order = [int(c.get_attribute("data-rid")) for c in cards]
        assert len(order) == 5  # coin-1's rationales, top tier first
        # The rationale holding a script tag is shown as text, and it never ran.
        script_card = browser.find_element(By.CSS_SELECTOR, f".rat[data-rid='{ids['coin-1/free/1']}'] pre.text")
        assert script_card.text == SCRIPT
        assert browser.execute_script("return window.__pwned === undefined")

        def label_of(rid):
            return browser.find_element(By.CSS_SELECTOR, f".rat[data-rid='{rid}']").get_attribute("data-label")

        # by mouse: the first card's "sound" button
        cards[0].find_element(By.CSS_SELECTOR, "button[data-label='sound']").click()
        wait.until(lambda d: label_of(order[0]) == "sound")
        wait.until(lambda d: "1 labels of 1 rationales" in d.find_element(By.ID, "agreement").text)
        # by keys: j moves to the second card, 2 labels it and moves on, 3 labels the third
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("j")
        body.send_keys("2")
        wait.until(lambda d: label_of(order[1]) == "right_unsound")
        body.send_keys("3")
        wait.until(lambda d: label_of(order[2]) == "wrong")
        # back to the third, c opens its comment, Enter saves it with the label
        body.send_keys("k")
        body.send_keys("c")
        active = browser.switch_to.active_element
        assert active.get_attribute("class") == "comment"
        active.send_keys("reaches it by luck\n")
        wait.until(lambda d: "saved" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: "3 labels of 3 rationales" in d.find_element(By.ID, "agreement").text)

        with LabelStore(run, readonly=True) as store:
            stored = {r["rid"]: (r["label"], r["comment"]) for r in store.labels("alice")}
        assert stored == {order[0]: ("sound", ""), order[1]: ("right_unsound", ""),
                          order[2]: ("wrong", "reaches it by luck")}

        browser.refresh()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".rat"))
        assert [label_of(r) for r in order[:4]] == ["sound", "right_unsound", "wrong", ""]
        pressed = browser.find_element(By.CSS_SELECTOR, f".rat[data-rid='{order[1]}'] button[aria-pressed='true']")
        assert pressed.get_attribute("data-label") == "right_unsound"
        comment = browser.find_element(By.CSS_SELECTOR, f".rat[data-rid='{order[2]}'] .comment")
        assert comment.get_attribute("value") == "reaches it by luck"
        panel = browser.find_element(By.ID, "agreement").text
        assert "3 labels of 3 rationales by alice (3)" in panel
        kappa = review_figures(run)["tier_vs_label"]["kappa"]
        assert browser.find_element(By.ID, "fig-kappa").text == f"{kappa:.3f}"
        assert "3 of 8 rationales labelled by alice" in browser.find_element(By.ID, "progress").text

        # 0 clears a label, and the panel follows
        browser.find_element(By.CSS_SELECTOR, f".rat[data-rid='{order[0]}']").click()
        browser.find_element(By.TAG_NAME, "body").send_keys("0")
        wait.until(lambda d: label_of(order[0]) == "")
        wait.until(lambda d: "2 labels of 2 rationales" in d.find_element(By.ID, "agreement").text)
    finally:
        server.stop()
