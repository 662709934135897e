"""The finance_risk review page in a real browser (Debian's Chromium, headless): the queue in
score order, an alert's contributions and the user's recent transactions as the API gives
them, a decision made from the keyboard that leaves the open queue and becomes a label, the
chart of alerts per day against the budget, and the decision still there after a restart."""

from __future__ import annotations

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.finance_risk.serve import ROUTES, UI, RiskPredictor
from tests.browser import chromium, console_errors, screenshot, unlabelled_controls, wait_for
from tests.pipelines.finance_risk.test_alerts import test_events

pytestmark = [pytest.mark.xdist_group("finance_risk_model"), pytest.mark.browser]


def _server(model, state):
    pred = RiskPredictor(model, "fr", state_dir=state)
    cfg = ServeConfig(max_body_bytes=4 * 2**20, drain_s=0.2)
    return BackgroundServer(create_app(pred, cfg, routes=ROUTES, ui=UI))


def test_an_analyst_decides_an_alert_from_the_keyboard(trained, tmp_path):
    from selenium.webdriver.common.by import By

    state = tmp_path / "state"
    events = test_events(trained["data"], 1500)
    driver = chromium()
    try:
        with _server(trained["model"], state) as srv:
            wait_until_ready(srv.url, timeout=120)
            for i in range(0, len(events), 500):
                r = httpx.post(f"{srv.url}/v1/models/fr/predict",
                               json={"events": events[i : i + 500]}, timeout=60)  # fmt: skip
                assert r.status_code == 200
            api = httpx.get(f"{srv.url}/v1/alerts", params={"limit": 500}, timeout=10).json()
            driver.get(srv.url + "/ui/")
            wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#a-features tr"))
            ids = [
                tr.get_attribute("data-id")
                for tr in driver.find_elements(By.CSS_SELECTOR, "#queue tr")
            ]
            assert ids == [a["id"] for a in api["alerts"]]  # the API's order: highest score first
            top = api["alerts"][0]
            assert driver.find_element(By.ID, "a-tx").text == top["id"]
            feats = [tr.find_elements(By.TAG_NAME, "td")[0].text
                     for tr in driver.find_elements(By.CSS_SELECTOR, "#a-features tr")]  # fmt: skip
            assert feats == [f["feature"] for f in top["payload"]["top_features"]]
            detail = httpx.get(f"{srv.url}/v1/alerts/{top['id']}", timeout=10).json()
            assert len(driver.find_elements(By.CSS_SELECTOR, "#a-recent tr")) == len(
                detail["recent_transactions"]
            )
            bars = driver.find_elements(By.CSS_SELECTOR, "#chart rect")
            per_day = httpx.get(f"{srv.url}/v1/alerts/per-day?days=60", timeout=10).json()
            assert len(bars) == len(per_day["days"]) and per_day["days"]
            assert "budget 5" in driver.find_element(By.ID, "chart").text
            screenshot(driver, "finance_risk")

            # keyboard only: j moves to the second alert, f decides it as fraud
            body = driver.find_element(By.TAG_NAME, "body")
            body.click()
            body.send_keys("j")
            second = api["alerts"][1]["id"]
            wait_for(driver, lambda d: d.find_element(By.ID, "a-tx").text == second)
            driver.find_element(By.ID, "note").send_keys("two cards in a minute")
            driver.find_element(By.ID, "fraud").send_keys("\n")  # Enter on the focused button
            wait_for(driver, lambda d: second not in [
                tr.get_attribute("data-id") for tr in d.find_elements(By.CSS_SELECTOR, "#queue tr")])  # fmt: skip
            got = httpx.get(f"{srv.url}/v1/alerts/{second}", timeout=10).json()["alert"]
            assert got["decision"]["verdict"] == "fraud"
            assert got["decision"]["note"] == "two cards in a minute"
            assert "Marked fraud" in driver.find_element(By.ID, "notice").text
            # the next open alert is shown, ready for the next decision
            wait_for(driver, lambda d: d.find_element(By.ID, "a-tx").text not in ("", second))
            assert console_errors(driver) == []
            assert unlabelled_controls(driver) == []  # every control has a label

        with _server(trained["model"], state) as srv:  # a restart keeps the decision
            wait_until_ready(srv.url, timeout=120)
            driver.get(srv.url + "/ui/")
            from selenium.webdriver.support.ui import Select

            wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#queue tr"))
            Select(driver.find_element(By.ID, "status")).select_by_value("decided")
            wait_for(driver, lambda d: [tr.get_attribute("data-id")
                                     for tr in d.find_elements(By.CSS_SELECTOR, "#queue tr")] == [second])  # fmt: skip
            assert "fraud" in driver.find_element(By.ID, "queue").text
            assert "1 decided" in driver.find_element(By.ID, "summary").text
    finally:
        driver.quit()
