"""The web console in a real browser (headless Chromium through Selenium) against a real
server with ``--auth``: sign in, load a version and see it ready, try an image and read its
top-k, run a rollout that breaks its threshold under live traffic and watch it roll back,
be refused a management action with an infer-only token, and keep a screenshot and an
axe-core accessibility report of every page (``$TORCHFERRY_ARTIFACTS/console/``)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

if not os.environ.get("CI"):  # under CI a missing package fails the run instead
    pytest.importorskip("selenium", reason="the console's browser tests need selenium")
    pytest.importorskip(
        "axe_core_python", reason="the console's browser tests need axe-core-python"
    )

import axe_core_python
from console_support import BLOCKING_IMPACTS, Console, write_json
from PIL import Image
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

AXE_SOURCE = (Path(axe_core_python.__file__).parent / "axe.min.js").read_text(encoding="utf-8")
PAGES = ("sign-in", "models", "try", "model", "server", "refusal")
ROW = [1.0, 2.0, 3.0, 4.0]
#: lin's answer to ROW, as pretty JSON writes it
Y = re.compile(r"\[\s*0(\.0)?,\s*-3\.5,\s*10(\.0)?\s*\]")


def wait_for(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 10) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)


def find(browser: WebDriver, css: str, timeout: float = 10) -> WebElement:
    """The displayed element matching ``css`` (waiting for it)."""

    def shown(driver: WebDriver) -> WebElement | bool:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else False

    return wait_for(browser, shown, timeout)


def text_of(browser: WebDriver, css: str, expected: str, timeout: float = 10) -> str:
    """The text of ``css`` once it contains ``expected``."""

    def has(driver: WebDriver) -> str | bool:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        text = found[0].text if found else ""
        return text if expected in text else False

    try:
        return wait_for(browser, has, timeout)
    except TimeoutException:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        raise AssertionError(
            f"{css} never said {expected!r}: {found[0].text if found else '(absent)'}"
        ) from None


def type_into(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def go(browser: WebDriver, hash_route: str) -> None:
    browser.execute_script("location.hash = arguments[0]", hash_route)


def sign_in(browser: WebDriver, console: Console, who: str) -> None:
    """A fresh tab state: no token, the sign-in form, then this token."""
    browser.get(console.url)
    browser.execute_script("sessionStorage.clear()")
    browser.get(console.url)
    type_into(find(browser, "#token-input"), console.tokens[who])
    find(browser, "form.sign-in button[type=submit]").click()
    text_of(browser, "#token-state", "scopes")


def confirm(browser: WebDriver, expected: str) -> None:
    """The confirmation dialog is open, has focus, says ``expected``; confirm it."""
    dialog = find(browser, "#confirm-dialog")
    assert expected in dialog.text, dialog.text
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == "confirm-yes"
    focused.click()
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#confirm-dialog"))


def answer_in(browser: WebDriver, region: str, status: int, timeout: float = 30) -> WebElement:
    """The action's answer shown in ``region`` with this HTTP status."""
    css = f"{region} .action-answer"
    try:
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, css), timeout)
    except TimeoutException:
        raise AssertionError(
            f"no answer in {region}: {browser.find_element(By.CSS_SELECTOR, region).text}"
        ) from None
    answer = browser.find_element(By.CSS_SELECTOR, css)
    assert answer.get_attribute("data-status") == str(status), answer.text
    return answer


def capture(browser: WebDriver, console: Console, page: str) -> None:
    """A screenshot of the page and its axe-core audit, both kept as artifacts; the page
    must have no serious or critical violation."""
    save_full_page(browser, console.artifacts / f"{page}.png")
    browser.set_script_timeout(30)
    browser.execute_script(AXE_SOURCE)
    results = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(done).catch((e) => done({error: String(e)}));"
    )
    write_json(console.artifacts / f"{page}.axe.json", results)
    assert "error" not in results, results
    console.audits[page] = results
    blocking = [v for v in results["violations"] if v["impact"] in BLOCKING_IMPACTS]
    assert not blocking, [
        (v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]]) for v in blocking
    ]


def save_full_page(browser: WebDriver, path: Path) -> None:
    """The whole page, not just the window (Chromium's DevTools screenshot past the viewport)."""
    browser.execute_script("window.scrollTo(0, 0)")
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    # the page is laid out again without a scroll bar: as wide as the window, then
    width = max(size["width"], browser.execute_script("return window.innerWidth"))
    clip = {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def png(path: Path) -> Path:
    image = Image.new("L", (16, 16))
    image.putdata([(x * 16 + y * 3) % 256 for x in range(16) for y in range(16)])
    image.save(path, format="PNG")
    return path


def loaded(console: Console) -> list[int]:
    answer = httpx.get(
        f"{console.server.management_url}/models/lin/all", headers=console.bearer("manage")
    )
    return [int(v["modelVersion"]) for v in answer.json()] if answer.status_code == 200 else []


@contextmanager
def traffic(console: Console, model: str) -> Iterator[list[int]]:
    """V2 requests to ``model`` on the inference port, one after another, until the block
    ends; yields the statuses so far."""
    statuses: list[int] = []
    stop = threading.Event()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}

    def send() -> None:
        with httpx.Client(
            base_url=console.server.url, timeout=10, headers=console.bearer("infer")
        ) as client:
            while not stop.is_set():
                statuses.append(client.post(f"/v2/models/{model}/infer", json=body).status_code)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(15)


def test_load_a_version_through_the_console_and_see_it_ready(console, browser):
    browser.get(console.url)
    browser.execute_script("sessionStorage.clear()")
    browser.get(console.url)
    find(browser, "#token-input")
    capture(browser, console, "sign-in")
    sign_in(browser, console, "manage")
    text_of(browser, 'tr[data-key="lin/1"]', "ready")
    assert 2 not in loaded(console)

    type_into(find(browser, "#load-name"), "lin")
    candidate = str(console.sources / "lin" / "2")
    wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#load-found option[value="{candidate}"]'),
    )
    Select(find(browser, "#load-found")).select_by_value(candidate)
    find(browser, "#load-submit").click()
    confirm(browser, candidate)
    answer = answer_in(browser, "#load-status", 200)
    assert "lin" in answer.text
    row = text_of(browser, 'tr[data-key="lin/2"]', "ready")
    assert "onnxruntime" in row and "unsigned" in row, row
    assert (
        browser.find_element(By.CSS_SELECTOR, 'tr[data-key="lin/2"] [data-state]').get_attribute(
            "data-state"
        )
        == "ready"
    )
    assert 2 in loaded(console)
    # the table refreshes without taking the focus away from a link in it
    link = find(browser, 'tr[data-key="tiny_image/1"] a')
    browser.execute_script("arguments[0].focus()", link)
    before = find(browser, "#models-updated").text
    wait_for(browser, lambda d: d.find_element(By.ID, "models-updated").text != before, 10)
    assert browser.switch_to.active_element == link
    capture(browser, console, "models")


def _top_k(browser: WebDriver) -> list[tuple[str, float]]:
    rows = find(browser, "#topk-table").find_elements(By.CSS_SELECTOR, "tbody tr")
    return [
        (
            r.find_elements(By.TAG_NAME, "td")[1].text,
            float(r.find_elements(By.TAG_NAME, "td")[2].text),
        )
        for r in rows
    ]


def try_image(browser: WebDriver, image: Path) -> None:
    go(browser, "#/try")
    type_into(find(browser, "#try-model"), "tiny_image")
    Select(find(browser, "#try-protocol")).select_by_value("predict")
    find(browser, "#try-kind-image").click()
    find(browser, "#try-image").send_keys(str(image))
    find(browser, "#try-send").click()


def test_try_an_image_and_read_its_top_k(console, browser, tmp_path):
    sign_in(browser, console, "manage")
    image = png(tmp_path / "digit.png")
    try_image(browser, image)
    outcome = find(browser, "#try-outcome", timeout=20)
    assert outcome.get_attribute("data-status") == "200", outcome.text
    expected = httpx.post(
        f"{console.server.url}/predict/tiny_image",
        content=image.read_bytes(),
        headers={"Content-Type": "image/png", **console.bearer("infer")},
    ).json()["result"][0]
    shown = _top_k(browser)
    assert [label for label, _ in shown] == [c["label"] for c in expected]
    labels = set(json.loads((console.store / "tiny_image" / "1" / "labels.json").read_text()))
    assert {label for label, _ in shown} <= labels
    for (_, score), c in zip(shown, expected, strict=True):
        assert score == pytest.approx(c["score"], abs=1e-4)
    request_id = find(browser, "#try-request-id").text
    assert request_id and request_id != "—"
    assert find(browser, "#try-model-version").text == "1"
    assert find(browser, "#try-latency").text.endswith(" ms")
    assert find(browser, "#try-server-latency").text.endswith(" ms")
    assert '"label"' in find(browser, "#try-answer").text
    capture(browser, console, "try")


def send_try(browser: WebDriver, protocol: str, kind: str, value: str | Path) -> WebElement:
    """Send the Try it form with this protocol and input; the new outcome."""
    Select(find(browser, "#try-protocol")).select_by_value(protocol)
    find(browser, f"#try-kind-{kind}").click()
    if kind == "json":
        type_into(find(browser, "#try-json"), str(value))
    else:
        find(browser, f"#try-{kind}").send_keys(str(value))
    browser.execute_script("document.getElementById('try-outcome')?.remove()")
    find(browser, "#try-send").click()
    return find(browser, "#try-outcome", timeout=20)


def test_try_it_speaks_every_protocol_with_json_and_npy(console, browser, tmp_path):
    """lin's y = x @ W for x = [1, 2, 3, 4] is [0, -3.5, 10], whatever the protocol."""
    sign_in(browser, console, "manage")
    go(browser, "#/try")
    type_into(find(browser, "#try-model"), "lin")
    type_into(find(browser, "#try-version"), "1")
    text_of(browser, "#try-signature", "x (FP32 [-1, 4])")
    npy = tmp_path / "row.npy"
    np.save(npy, np.array([ROW], dtype=np.float32))
    cases = [("v2", "json", "[1, 2, 3, 4]"), ("v2-binary", "json", "[[1, 2, 3, 4]]"),
             ("v1", "json", "[1, 2, 3, 4]"), ("predict", "json", "[[1, 2, 3, 4]]"),
             ("torchserve", "json", '{"data": [[1, 2, 3, 4]]}'), ("v2-binary", "npy", npy),
             ("v1", "npy", npy), ("v2-grpc", "json", "[1, 2, 3, 4]"), ("v2-grpc", "npy", npy)]  # fmt: skip
    for protocol, kind, value in cases:
        outcome = send_try(browser, protocol, kind, value)
        assert outcome.get_attribute("data-status") == "200", (protocol, kind, outcome.text)
        answer = find(browser, "#try-answer").text
        assert Y.search(answer), (protocol, kind, answer)
        assert find(browser, "#try-model-version").text == "1"
        if protocol == "v2-grpc":
            assert find(browser, "#try-grpc-status").text == "OK"
    outcome = send_try(browser, "v2", "json", "[1, 2, 3]")  # the server's refusal, shown
    assert outcome.get_attribute("data-status") == "400", outcome.text
    assert "x" in outcome.text and "4" in outcome.text


def test_a_rollout_that_breaks_its_threshold_rolls_back_on_the_page(console, browser):
    if 2 not in loaded(console):  # run on its own: the first test loads it through the page
        answer = httpx.post(
            f"{console.server.management_url}/models",
            params={"url": str(console.sources / "lin" / "2"), "model_name": "lin"},
            headers=console.bearer("manage"),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    sign_in(browser, console, "manage")
    go(browser, "#/models/lin")
    text_of(browser, "#versions-table", "ready")
    # the highest version is the default once loaded: make 1 the stable one first
    type_into(find(browser, "#default-version"), "1")
    find(browser, "#default-submit").click()
    confirm(browser, "version 1")
    answer_in(browser, "#action-status", 200)

    type_into(find(browser, "#rollout-version"), "2")
    for field_id, value in {
        "rollout-steps": "50, 100", "rollout-interval": "1", "rollout-max-p99-ms": "0.001",
        "rollout-min-requests": "5",
    }.items():  # fmt: skip
        type_into(find(browser, f"#{field_id}"), value)
    find(browser, "#rollout-submit").click()
    confirm(browser, "max_p99_ms")
    answer_in(browser, "#action-status", 201)
    wait_for(
        browser,
        lambda d: d.find_element(By.ID, "rollout-phase").get_attribute("data-phase") == "stepping",
    )
    assert find(browser, '#rollout-machine [aria-current="step"]').text == "stepping"
    with traffic(console, "lin") as statuses:
        text_of(browser, "#rollout-phase", "rolled back", timeout=20)
        text_of(browser, "#live-latest", "v2", timeout=10)
    assert statuses and all(s == 200 for s in statuses), statuses[:10]
    assert find(browser, '#rollout-machine [aria-current="step"]').text == "rolled back"
    reason = find(browser, "#rollout-reason").text
    assert "p99" in reason, reason
    history = find(browser, "#rollout-history").text
    assert "rollback" in history and "req" in history and "p99" in history, history
    capture(browser, console, "model")


def test_the_server_page_shows_workers_and_listeners(console, browser):
    sign_in(browser, console, "manage")
    go(browser, "#/server")
    workers = text_of(browser, "#workers-table", "serving")
    assert len(find(browser, "#workers-table").find_elements(By.CSS_SELECTOR, "tbody tr")) == 1, (
        workers
    )
    listeners = find(browser, "#listeners-table").text
    assert "management" in listeners and f"127.0.0.1:{console.server.management_port}" in listeners
    capture(browser, console, "server")


def test_the_keyboard_alone_reaches_the_pages(console, browser):
    sign_in(browser, console, "manage")
    go(browser, "#/models")
    browser.refresh()  # a fresh load: Tab starts at the top
    find(browser, "#models-table")
    keys = ActionChains(browser)
    keys.send_keys(Keys.TAB).perform()
    skip = browser.switch_to.active_element
    assert skip.get_attribute("id") == "skip-link" and skip.is_displayed()
    keys.send_keys(Keys.ENTER).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    assert browser.execute_script("return location.hash") == "#/models"
    browser.refresh()
    find(browser, "#models-table")
    ActionChains(browser).send_keys(Keys.TAB, Keys.TAB, Keys.TAB).perform()  # skip, Models, Try it
    assert browser.switch_to.active_element.text == "Try it"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    find(browser, "#try-model")
    assert find(browser, 'nav a[aria-current="page"]').text == "Try it"


def test_an_infer_only_token_is_refused_management_but_can_try(console, browser, tmp_path):
    sign_in(browser, console, "manage")
    find(browser, "#sign-out").click()
    find(browser, "#token-input")
    assert browser.execute_script("return sessionStorage.length") == 0
    assert browser.get_cookies() == []
    # a refused token: back to the form, with the server's message
    type_into(find(browser, "#token-input"), "not-a-token")
    find(browser, "form.sign-in button[type=submit]").click()
    refusal = httpx.get(f"{console.url}api/whoami", headers={"Authorization": "Bearer not-a-token"})
    assert refusal.status_code == 401
    text_of(browser, "#sign-in-error", refusal.json()["error"])
    sign_in(browser, console, "infer")
    assert console.tokens["infer"] not in browser.current_url

    go(browser, "#/models/lin")
    find(browser, "#manage-notice")
    type_into(find(browser, "#unload-version"), "1")
    find(browser, "#unload-submit").click()
    find(browser, "#confirm-dialog").send_keys(Keys.ESCAPE)  # Escape says no
    text_of(browser, "#action-status", "cancelled")
    find(browser, "#unload-submit").click()
    confirm(browser, "Unload")
    refused = answer_in(browser, "#action-status", 403)
    expected = httpx.delete(
        f"{console.server.management_url}/models/lin/1", headers=console.bearer("infer")
    )
    assert expected.status_code == 403
    assert expected.json()["message"] in refused.text
    assert "403" in refused.text
    assert 1 in loaded(console)
    capture(browser, console, "refusal")

    try_image(browser, png(tmp_path / "again.png"))
    outcome = find(browser, "#try-outcome", timeout=20)
    assert outcome.get_attribute("data-status") == "200", outcome.text
    assert _top_k(browser)


def test_every_page_has_a_screenshot_and_an_accessibility_report(console, browser):
    # no script error and no Content-Security-Policy violation on any page (a refused
    # fetch is logged too: those are the refusals the tests asked for)
    logged = browser.get_log("browser")
    errors = [
        entry["message"]
        for entry in logged
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
    assert not errors, errors
    for page in PAGES:
        shot = console.artifacts / f"{page}.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", page
        assert Image.open(io.BytesIO(shot.read_bytes())).size[0] >= 1000
        assert page in console.audits, f"no axe-core audit of {page}"
        assert console.audits[page]["passes"], page
