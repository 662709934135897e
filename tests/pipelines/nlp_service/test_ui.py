"""The nlp_service review page in a real browser (Debian's Chromium, headless): a three-turn
conversation typed from the keyboard shows what the service recorded after each turn; the
transcript browser lists it and reopens it; a message the service refuses leaves a readable
notice and the text still in the box."""

from __future__ import annotations

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.nlp_service.serve import ROUTES, UI, DialoguePredictor
from tests.browser import chromium, console_errors, screenshot, unlabelled_controls, wait_for

pytestmark = [pytest.mark.xdist_group("nlp_model"), pytest.mark.browser]


def _server(model, store):
    pred = DialoguePredictor(model, "nlp", store=store)
    # a short drain: the browser holds a keep-alive connection until the server stops
    return BackgroundServer(create_app(pred, ServeConfig(drain_s=0.2), routes=ROUTES, ui=UI))


@pytest.fixture
def driver():
    d = chromium()
    yield d
    d.quit()


def test_a_three_turn_conversation_shows_what_the_service_recorded(trained, tmp_path, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store = tmp_path / "conv.sqlite"
    messages = ["hi there", "where is my order 4821339", "my email is ann@example.com"]
    with _server(trained["model"], store) as srv:
        wait_until_ready(srv.url, timeout=120)
        driver.get(srv.url + "/ui/")
        assert "No model" not in driver.find_element(By.ID, "model-status").text
        box = driver.find_element(By.ID, "message")
        for i, text in enumerate(messages):
            box.send_keys(text, Keys.ENTER)  # the keyboard alone sends a message
            wait_for(
                driver,
                lambda d, n=2 * (i + 1): len(d.find_elements(By.CSS_SELECTOR, "#log li")) == n,
            )
        cid_short = driver.find_element(By.ID, "conversation-id").text.removeprefix("· ")
        rows = httpx.get(srv.url + "/v1/conversations", timeout=10).json()["conversations"]
        assert len(rows) == 1 and rows[0]["id"].startswith(cid_short) and rows[0]["user_turns"] == 3
        conv = httpx.get(f"{srv.url}/v1/conversations/{rows[0]['id']}", timeout=10).json()
        # the page shows the service's own record of the last turn, and its state
        last = conv["turns"][-2]["analysis"]
        assert driver.find_element(By.ID, "intent").text == last["intent"]
        assert driver.find_element(By.ID, "confidence").text == f"{last['confidence'] * 100:.1f}%"
        shown = [
            tuple(td.text for td in tr.find_elements(By.TAG_NAME, "td"))
            for tr in driver.find_elements(By.CSS_SELECTOR, "#state tr")
        ]
        assert shown == ([tuple(kv) for kv in conv["state"].items()] or [("—", "")])
        log = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#log li")]
        assert [t["text"] for t in conv["turns"]] == [line.split("\n")[1] for line in log]
        wait_for(driver, lambda d: messages[-1] in d.find_element(By.ID, "conversations").text)
        screenshot(driver, "nlp_service")

        # reopen it from the transcript browser with the keyboard, after a fresh load
        driver.get(srv.url + "/ui/")
        item = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#conversations button"))
        item.send_keys(Keys.ENTER)
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log li")) == 6)
        assert driver.find_element(By.ID, "intent").text == last["intent"]
        assert console_errors(driver) == []
        assert unlabelled_controls(driver) == []  # every control has a label


def test_a_refused_message_says_why_and_keeps_the_text(trained, tmp_path, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with _server(trained["model"], tmp_path / "conv.sqlite") as srv:
        wait_until_ready(srv.url, timeout=120)
        driver.get(srv.url + "/ui/")
        long = " ".join(f"w{i}" for i in range(600))  # under 4000 chars, over the token limit
        box = driver.find_element(By.ID, "message")
        box.send_keys(long, Keys.ENTER)
        notice = wait_for(driver, lambda d: d.find_element(By.ID, "notice").is_displayed()
                       and d.find_element(By.ID, "notice"))  # fmt: skip
        assert "not sent" in notice.text and "text" in notice.text and "token" in notice.text
        assert box.get_attribute("value") == long  # nothing the reviewer typed is lost
        assert driver.find_elements(By.CSS_SELECTOR, "#log li") == []


def test_with_an_api_key_the_page_signs_in_and_its_calls_carry_the_key(
    trained, tmp_path, driver, monkeypatch
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    monkeypatch.setenv("DV_API_KEY", "correct horse")
    with _server(trained["model"], tmp_path / "conv.sqlite") as srv:
        wait_until_ready(srv.url, timeout=120, headers={"x-api-key": "correct horse"})
        driver.get(srv.url + "/ui/")
        assert driver.current_url.endswith("/ui/login")
        key = driver.find_element(By.ID, "key")
        key.send_keys("wrong", Keys.ENTER)
        wait_for(driver, lambda d: "not this server" in d.page_source)
        driver.find_element(By.ID, "key").send_keys("correct horse", Keys.ENTER)
        box = wait_for(driver, lambda d: d.find_element(By.ID, "message"))
        assert driver.current_url.endswith("/ui/")
        box.send_keys("hello", Keys.ENTER)  # a fetch from the page: the cookie carries the key
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log li")) == 2)
        assert httpx.get(srv.url + "/v1/conversations", timeout=10).status_code == 401
        driver.find_element(By.XPATH, "//button[text()='Sign out']").click()
        wait_for(driver, lambda d: d.current_url.endswith("/ui/login"))
