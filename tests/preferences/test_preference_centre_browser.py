"""The preference centre in a real browser (headless Chromium, JavaScript off): keyboard only, labels, saved."""

from __future__ import annotations

import pytest

from preferences.cache import preferences_get
from preferences.unsubscribe import unsubscribe_url

from .factories import RecipientProfileFactory

pytestmark = [pytest.mark.django_db(transaction=True)]  # the live server's thread reads committed rows


def test_a_recipient_unticks_a_box_with_the_keyboard_and_saves(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    user = RecipientProfileFactory(locale="de").user
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(live_server.url + unsubscribe_url(user.pk, "marketing").removeprefix("http://127.0.0.1:8000"))
        assert browser.find_element(By.TAG_NAME, "h1").text == "Benachrichtigungseinstellungen"
        box = browser.find_element(By.ID, "pref-marketing-sms")
        assert box.is_selected() and box.get_attribute("aria-labelledby") == "cat-marketing ch-sms"
        assert not browser.find_element(By.ID, "pref-security-email").is_enabled()
        box.send_keys(Keys.SPACE)  # keyboard, no mouse
        assert not box.is_selected()
        save = browser.find_element(By.XPATH, "//button[text()='Einstellungen speichern']")
        save.send_keys(Keys.ENTER)
        # The form posts and the browser loads the answer: wait for it rather than read the old page.
        status = WebDriverWait(browser, 15).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[role=status]"))
        )
        assert "Ihre Einstellungen sind gespeichert." in status.text
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    state = preferences_get(user.pk)
    assert state.channel_setting("marketing", "sms") is False and state.channel_setting("marketing", "email") is None
