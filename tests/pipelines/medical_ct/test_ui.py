"""The medical_ct review page in a real browser (Debian's Chromium, headless): pick a study,
scroll its slices with the wheel and the keyboard, switch the window, click a nodule to jump
to its slice with its contour drawn, accept it, and find the report downloads."""

from __future__ import annotations

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.medical_ct.serve import ROUTES, UI, NodulePredictor
from pipelines.medical_ct.studies import StudyArchive
from tests.browser import chromium, console_errors, screenshot, unlabelled_controls, wait_for
from tests.pipelines.medical_ct.conftest import truth

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("ct_tiny")]


def test_a_radiologist_scrolls_a_study_and_accepts_a_nodule(model_and_case, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    model, case = model_and_case
    res = truth(case)
    arc = StudyArchive(tmp_path / "studies")
    sid = arc.add(res, "phantom-chest.zip")["id"]
    arc.close()
    depth = res.labels.shape[0]
    pred = NodulePredictor(model, "ct", studies=tmp_path / "studies")
    app = create_app(pred, ServeConfig(drain_s=0.2), routes=ROUTES, ui=UI)
    driver = chromium()
    try:
        with BackgroundServer(app) as srv:
            wait_until_ready(srv.url, timeout=120)
            driver.get(srv.url + "/ui/")
            item = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#studies button"))
            assert "phantom-chest.zip" in item.text
            item.send_keys(Keys.ENTER)
            label = wait_for(driver, lambda d: d.find_element(By.ID, "slice-label").text and d.find_element(By.ID, "slice-label"))  # fmt: skip
            first = res.nodules[0]
            assert label.text.startswith(f"slice {first.slice + 1} of {depth}")
            assert f"nodule {first.id}" in label.text

            def shown():
                return int(driver.find_element(By.ID, "z").get_attribute("value"))

            stack = driver.find_element(By.ID, "stack")
            ActionChains(driver).scroll_from_origin(
                ScrollOrigin.from_element(stack), 0, 120
            ).perform()
            wait_for(driver, lambda d: shown() == min(first.slice + 1, depth - 1))
            stack.send_keys(Keys.ARROW_UP, Keys.ARROW_UP)
            wait_for(driver, lambda d: shown() == max(min(first.slice + 1, depth - 1) - 2, 0))
            stack.send_keys(Keys.END)
            wait_for(driver, lambda d: shown() == depth - 1)

            driver.find_element(By.CSS_SELECTOR, "[data-window=mediastinum]").click()
            src = driver.find_element(By.ID, "slice").get_attribute("src")
            assert src.endswith(f"/slices/{depth - 1}?window=mediastinum")
            driver.find_element(By.CSS_SELECTOR, "[data-window=lung]").click()

            # click the last nodule in the list: the viewer jumps to its slice, contour drawn
            last = res.nodules[-1]
            driver.find_elements(By.CSS_SELECTOR, "#nodules button")[-1].click()
            wait_for(driver, lambda d: shown() == last.slice)
            contour = driver.find_element(By.ID, "contours")
            assert contour.get_attribute("src").endswith(f"/contours/{last.slice}")
            wait_for(driver, lambda d: d.execute_script(
                "const i = document.getElementById('contours'); return i.complete && i.naturalWidth"))  # fmt: skip
            screenshot(driver, "medical_ct")

            driver.find_element(By.ID, "note").send_keys("solid, 6 mm")
            driver.find_element(By.ID, "accept").click()
            wait_for(driver, lambda d: "accepted" in d.find_element(By.ID, "nodules").text)
            got = httpx.get(f"{srv.url}/v1/studies/{sid}", timeout=10).json()["study"]
            review = next(n for n in got["nodules"] if n["id"] == last.id)["review"]
            assert review["verdict"] == "accepted" and review["note"] == "solid, 6 mm"
            links = {
                a.text: a.get_attribute("href")
                for a in driver.find_elements(By.CSS_SELECTOR, "#reports a")
            }
            assert set(links) == {"Markdown", "JSON", "DICOM SEG"}
            assert httpx.get(links["DICOM SEG"], timeout=10).status_code == 200
            assert console_errors(driver) == []
            assert unlabelled_controls(driver) == []  # every control has a label
    finally:
        driver.quit()
