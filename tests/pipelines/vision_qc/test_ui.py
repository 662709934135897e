"""The vision_qc review page in a real browser (Debian's Chromium, headless): an uploaded image
comes back with its boxes drawn over it and the verdict at the operating threshold, as the API
recorded them; a reviewer marks it from the keyboard; the gallery filters by verdict; an
upload over the server's limit is refused with a readable message before it is sent."""

from __future__ import annotations

import httpx
import pytest

from core.serve import ServeConfig, create_app
from core.serve.server import BackgroundServer, wait_until_ready
from pipelines.vision_qc.data import load_dataset
from pipelines.vision_qc.serve import ROUTES, UI, DefectPredictor
from pipelines.vision_qc.train import partition
from tests.browser import chromium, console_errors, screenshot, unlabelled_controls, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vqc_trained"), pytest.mark.browser]


def test_an_operator_uploads_an_image_and_marks_the_result(trained, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    test = partition(load_dataset(trained.data), trained.data)["test"]
    part = next(s for s in test if s.defective)
    pred = DefectPredictor(trained.model_dir, "vqc", inspections=tmp_path / "inspections")
    app = create_app(pred, ServeConfig(max_body_bytes=400_000, drain_s=0.2), routes=ROUTES, ui=UI)
    driver = chromium()
    try:
        with BackgroundServer(app) as srv:
            wait_until_ready(srv.url, timeout=120)
            driver.get(srv.url + "/ui/")
            driver.find_element(By.ID, "file").send_keys(str(part.path))
            driver.find_element(By.ID, "inspect").click()
            wait_for(driver, lambda d: d.find_element(By.ID, "result").is_displayed())
            (ins,) = httpx.get(srv.url + "/v1/inspections", timeout=10).json()["inspections"]
            rects = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#boxes rect")
                             or not ins["detections"])  # fmt: skip
            assert (len(rects) if ins["detections"] else 0) == len(ins["detections"])
            assert ins["detections"], "the trained model finds the defect in this part"
            labels = driver.find_element(By.ID, "boxes").text
            assert all(d["class"] in labels for d in ins["detections"])
            verdict = driver.find_element(By.ID, "verdict").text
            assert verdict.startswith("FAIL" if ins["defective"] else "PASS")
            assert f"{ins['threshold']:.3f}" in verdict
            rows = driver.find_elements(By.CSS_SELECTOR, "#detections tr")
            assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [
                d["class"] for d in ins["detections"]
            ]
            # the picture is loaded (same-origin image under the page's policy)
            assert (
                driver.execute_script(
                    "const i = document.getElementById('picture'); return i.complete && i.naturalWidth"
                )
                == part.width
            )
            screenshot(driver, "vision_qc")

            # keyboard: type a note, tab to "Wrong", press Enter
            note = driver.find_element(By.ID, "note")
            note.send_keys("the stain is a reflection")
            note.send_keys(Keys.TAB, Keys.TAB, Keys.ENTER)
            wait_for(driver, lambda d: "wrong" in d.find_element(By.ID, "review").text)
            got = httpx.get(f"{srv.url}/v1/inspections/{ins['id']}", timeout=10).json()
            assert got["review"]["verdict"] == "wrong"
            assert got["review"]["note"] == "the stain is a reflection"

            # the gallery: one card; filtering to "pass" empties it when the part failed
            wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery li")) == 1)
            other = "pass" if ins["defective"] else "fail"
            Select(driver.find_element(By.ID, "f-verdict")).select_by_value(other)
            wait_for(driver, lambda d: d.find_element(By.ID, "gallery-empty").is_displayed())
            assert console_errors(driver) == []
            assert unlabelled_controls(driver) == []  # every control has a label

            # an upload over the body limit: refused in the page, with sizes, nothing sent
            big = tmp_path / "huge.png"
            big.write_bytes(b"\x89PNG" + b"\0" * 600_000)
            driver.find_element(By.ID, "file").send_keys(str(big))
            driver.find_element(By.ID, "inspect").click()
            msg = wait_for(driver, lambda d: d.find_element(By.ID, "notice").is_displayed()
                           and d.find_element(By.ID, "notice").text)  # fmt: skip
            assert "huge.png is 586 KB" in msg and "at most 391 KB" in msg
            assert (
                len(httpx.get(srv.url + "/v1/inspections", timeout=10).json()["inspections"]) == 1
            )
    finally:
        driver.quit()
