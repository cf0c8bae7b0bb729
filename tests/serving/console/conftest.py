"""The console's browser tests: one real server (``--auth``, one worker, a model source
root) and one headless Chromium driven by Selenium, both shared by the module.

Debian's ``chromium`` and ``chromium-driver`` packages drive the browser; never Selenium
Manager (CI has no network to download a driver). Without them the tests skip, except
under CI (``CI`` set), where they must run and so fail.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from torchferry.archive import ModelStore
from torchferry.serving.auth.keyfile import create_token
from torchferry.serving.settings import KEY_FILE_DIR, KEY_FILE_NAME

# versions_store lives one folder up, beside the other served tests that share it
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from console_support import Console
from versions_store import WEIGHTS, write_lin

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPOSITORY = Path(__file__).resolve().parents[3]


def _artifacts() -> Path:
    root = os.environ.get("TORCHFERRY_ARTIFACTS")
    folder = (Path(root) if root else REPOSITORY / "test-artifacts") / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def console(
    model_store: ModelStore,
    start_server: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Console]:
    """``tiny_image`` (an image classifier with labels) and ``lin`` 1 in the store; ``lin``
    2 under the model source root for the Load action; a manage token and an infer-only
    token."""
    root = tmp_path_factory.mktemp("console")
    store = root / "store"
    shutil.copytree(model_store.root / "tiny_image" / "1", store / "tiny_image" / "1")
    write_lin(ModelStore(store), 1, WEIGHTS)
    sources = root / "sources"
    write_lin(ModelStore(sources), 2, WEIGHTS)
    key_file = store / KEY_FILE_DIR / KEY_FILE_NAME
    tokens = {
        who: create_token(key_file, scopes, timedelta(hours=1), who)[1]
        for who, scopes in {"manage": ["manage", "infer"], "infer": ["infer"]}.items()
    }
    args = ["--store", str(store), "--auth", "--workers", "1", "--threads", "1"]
    args += ["--model-source-root", str(sources), "--log-level", "warning"]
    with start_server(args, root / "server.log") as server:
        yield Console(server, tokens, store, sources, _artifacts())


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:  # imported here: the other tests of this folder (the console's API) need no Selenium
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"the console's browser tests need {' and '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
