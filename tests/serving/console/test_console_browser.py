"""The web console in a real browser (headless Chromium through Selenium) against a real
server with ``--auth``: sign in, load a version and see it ready, try an image and read its
top-k, run a rollout that breaks its threshold under live traffic and watch it roll back,
be refused a management action with an infer-only token, check the live figures' maths in
the page, reach the pages by keyboard, and keep a screenshot and an axe-core accessibility
report of every page (``$TORCHFERRY_ARTIFACTS/console/``)."""

from __future__ import annotations

import base64
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
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

AXE_SOURCE = (Path(axe_core_python.__file__).parent / "axe.min.js").read_text(encoding="utf-8")
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
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            text = found[0].text if found else ""
        except StaleElementReferenceException:  # redrawn between finding and reading
            return False
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


def signed_out(browser: WebDriver, console: Console) -> None:
    """A fresh tab state, loaded once: no token, the sign-in form."""
    if browser.current_url.startswith(console.url):
        browser.execute_script("sessionStorage.clear()")
    browser.get(console.url)  # a full load: the URL has no fragment
    find(browser, "#token-input")


def enter_token(browser: WebDriver, console: Console, who: str) -> None:
    type_into(find(browser, "#token-input"), console.tokens[who])
    find(browser, "form.sign-in button[type=submit]").click()
    text_of(browser, "#token-state", "scopes")


def sign_in(browser: WebDriver, console: Console, who: str) -> None:
    signed_out(browser, console)
    enter_token(browser, console, who)


def confirm(browser: WebDriver, expected: str, danger: bool = False) -> None:
    """The confirmation dialog is open, says ``expected``, and has focus on Confirm (on
    Cancel when the action is destructive); confirm it."""
    dialog = find(browser, "#confirm-dialog")
    assert expected in dialog.text, dialog.text
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == ("confirm-no" if danger else "confirm-yes")
    find(browser, "#confirm-yes").click()
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
    signed_out(browser, console)
    capture(browser, console, "sign-in")
    enter_token(browser, console, "manage")
    assert browser.title.startswith("Models")
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
    # the table gains lin/2 next to lin/1 (in place: no row is moved) and lin/1 keeps focus
    link = find(browser, 'tr[data-key="lin/1"] a')
    browser.execute_script("arguments[0].focus()", link)
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


def test_the_keyboard_reaches_the_server_page_and_it_shows_workers_and_listeners(console, browser):
    sign_in(browser, console, "manage")
    browser.refresh()  # a fresh load, still signed in: Tab starts at the top
    find(browser, "#models-table")
    keys = ActionChains(browser)
    keys.send_keys(Keys.TAB).perform()
    skip = browser.switch_to.active_element
    assert skip.get_attribute("id") == "skip-link" and skip.is_displayed()
    keys.send_keys(Keys.ENTER).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    assert browser.execute_script("return location.hash") != "#main"  # no route change
    # back from <main>: Sign out, then the last page link
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB, Keys.TAB).key_up(
        Keys.SHIFT
    ).perform()
    assert browser.switch_to.active_element.text == "Server"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    workers = text_of(browser, "#workers-table", "serving")
    # the route change names the page and moves focus to its heading
    heading = browser.switch_to.active_element
    assert heading.tag_name == "h1" and heading.text == "Server"
    assert browser.title.startswith("Server")
    assert find(browser, 'nav a[aria-current="page"]').text == "Server"
    assert len(find(browser, "#workers-table").find_elements(By.CSS_SELECTOR, "tbody tr")) == 1, (
        workers
    )
    listeners = find(browser, "#listeners-table").text
    assert "management" in listeners and f"127.0.0.1:{console.server.management_port}" in listeners
    capture(browser, console, "server")
    go(browser, "#/models/%E0%A4%A")  # a malformed escape is taken as typed, not a dead page
    text_of(browser, "#model-problem", "No model named %E0%A4%A is loaded")
    # the page keeps polling, but its one alert is not redrawn (nor announced) each time
    polls_and_changes = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        performance.clearResourceTimings();
        let changes = 0;
        const watch = new MutationObserver((records) => { changes += records.length; });
        watch.observe(document.getElementById("model-problem"), { subtree: true, childList: true, characterData: true });
        setTimeout(() => {
          watch.disconnect();
          const polls = performance.getEntriesByType("resource").filter((e) => e.name.includes("api/overview")).length;
          done([polls, changes]);
        }, 2600);
        """
    )
    assert polls_and_changes[0] >= 1 and polls_and_changes[1] == 0, polls_and_changes


def test_an_infer_only_token_is_refused_management_but_can_try(console, browser, tmp_path):
    sign_in(browser, console, "manage")
    go(browser, "#/try")
    type_into(find(browser, "#try-model"), "lin")
    send_try(browser, "v2", "json", "[1, 2, 3, 4]")
    find(browser, "#sign-out").click()
    find(browser, "#token-input")
    storage = "return [sessionStorage.length, localStorage.length]"
    assert browser.execute_script(storage) == [0, 0]
    assert browser.get_cookies() == []
    # a refused token: back to the form, with the server's message
    type_into(find(browser, "#token-input"), "not-a-token")
    find(browser, "form.sign-in button[type=submit]").click()
    refusal = httpx.get(f"{console.url}api/whoami", headers={"Authorization": "Bearer not-a-token"})
    assert refusal.status_code == 401
    text_of(browser, "#sign-in-error", refusal.json()["error"])
    enter_token(browser, console, "infer")  # the same page: nothing reloaded
    assert console.tokens["infer"] not in browser.current_url
    go(browser, "#/try")  # what was tried before Sign out is forgotten
    assert browser.find_element(By.ID, "try-json").get_attribute("value") == ""
    assert find(browser, "#try-model").get_attribute("value") == ""

    browser.execute_script("performance.clearResourceTimings()")
    go(browser, "#/models/lin")
    find(browser, "#manage-notice")
    find(browser, "#read-notice")
    type_into(find(browser, "#unload-version"), "1")
    find(browser, "#unload-submit").click()
    find(browser, "#confirm-dialog").send_keys(Keys.ESCAPE)  # Escape says no
    text_of(browser, "#action-status", "cancelled")
    find(browser, "#unload-submit").click()
    confirm(browser, "Unload", danger=True)
    refused = answer_in(browser, "#action-status", 403)
    expected = httpx.delete(
        f"{console.server.management_url}/models/lin/1", headers=console.bearer("infer")
    )
    assert expected.status_code == 403
    assert expected.json()["message"] in refused.text
    assert "403" in refused.text
    assert 1 in loaded(console)
    # a token that cannot read is told once, and the page never asks (and is refused)
    asked = "return performance.getEntriesByType('resource').map((e) => e.name)"
    assert not [url for url in browser.execute_script(asked) if "api/overview" in url]
    assert not browser.find_element(By.ID, "model-problem").text
    assert browser.execute_script(storage) == [1, 0]
    capture(browser, console, "refusal")

    try_image(browser, png(tmp_path / "again.png"))
    outcome = find(browser, "#try-outcome", timeout=20)
    assert outcome.get_attribute("data-status") == "200", outcome.text
    assert _top_k(browser)


def test_the_live_figures_maths_in_the_page(console, browser):
    """stats.js and live.js as the page runs them, on readings with known answers."""
    if not browser.current_url.startswith(console.url):
        browser.get(console.url)
    browser.set_script_timeout(10)
    got = browser.execute_async_script(
        """
        const [base, done] = arguments;
        Promise.all([import(base + "static/stats.js"), import(base + "static/live.js")]).then(([stats, live]) => {
          const B = [0.1, 0.2, 0.4, "+Inf"];
          const q = (p, counts) => stats.histogramQuantile(p, { bounds: B, counts, sum: 0 });
          const version = (success, failure, latency, queue, batch, batchSum) => ({
            success, failure, rows: 0, executions: 0, pending: 0,
            latency: { bounds: B, counts: latency, sum: 0 }, queue: { bounds: B, counts: queue, sum: 0 },
            batch: { bounds: [1, 2, "+Inf"], counts: batch, sum: batchSum }, shadow: { rows: 0, agreed: 0, max_abs_diff: null } });
          const before = version(10, 0, [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0], 0);
          const now = version(28, 2, [0, 20, 20, 20], [20, 20, 20, 20], [5, 10, 10], 15);
          const restarted = version(3, 0, [0, 3, 3, 3], [3, 3, 3, 3], [3, 3, 3], 3);
          const figures = new live.LiveFigures();
          const reading = (at, versions) => ({ at, available: true, reason: null, versions });
          figures.add(reading(100, { 1: before }), ["1"]);
          figures.add(reading(102, { 1: now, 2: before }), ["1", "2"]);
          const withNew = figures.versions();
          const newcomer = figures.latest.get("2");
          figures.add(reading(104, { 1: now, 2: now }), ["2"]);
          done({
            within: q(0.5, [0, 10, 10, 10]), first: q(0.25, [4, 8, 8, 8]), inf: q(0.99, [0, 0, 5, 10]),
            zero: q(0.5, [0, 0, 0, 0]), interval: stats.intervalFigures(now, before, 2),
            reset: stats.intervalFigures(restarted, now, 2), fresh: stats.intervalFigures(now, undefined, 2),
            withNew, newcomer, afterUnload: figures.versions(), seconds: figures.seconds,
          });
        }).catch((e) => done({ error: String(e) }));
        """,
        console.url,
    )
    assert "error" not in got, got
    assert got["within"] == pytest.approx(0.15)  # halfway into (0.1, 0.2]
    assert got["first"] == pytest.approx(0.05)  # the first bucket starts at 0
    assert got["inf"] == pytest.approx(0.4)  # in +Inf: the last finite bound
    assert got["zero"] is None
    interval = got["interval"]
    assert interval["rps"] == pytest.approx(10) and interval["errorRate"] == pytest.approx(0.1)
    assert interval["p50"] == pytest.approx(150) and interval["p99"] == pytest.approx(199)
    assert interval["queueP50"] == pytest.approx(50) and interval["batch"] == pytest.approx(1.5)
    nothing = dict.fromkeys(interval)
    assert got["reset"] == nothing  # a worker restarted: the interval is skipped
    assert got["fresh"] == nothing  # a new version: nothing to compare with yet
    assert got["withNew"] == ["1", "2"] and got["newcomer"]["rps"] is None
    assert got["afterUnload"] == ["2"] and got["seconds"] == 2


def test_no_page_logged_a_script_error(browser):
    """No script error and no Content-Security-Policy violation on any page the tests
    visited (a refused fetch is logged too: those are the refusals the tests asked for)."""
    logged = browser.get_log("browser")
    errors = [
        entry["message"]
        for entry in logged
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
    assert not errors, errors
