"""The campaign admin in a real browser (headless Chromium): the nested audience builder and live progress.

Debian's ``chromium`` and ``chromium-driver`` drive the pages of a live server on the test database.
Without them the tests skip locally, and fail under ``CI=true`` (``.ci/run`` installs both), so a CI
run never passes by skipping them. Set ``BROWSER_SCREENSHOTS=<dir>`` to keep a PNG of each page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from django.conf import settings

from campaigns import services
from campaigns.models import Campaign, CampaignLaunch, CampaignState
from campaigns.orchestrator import CampaignOrchestrator
from campaigns.progress import record_expansion, sent_tally
from campaigns.selectors import audience_estimate
from notifications.bus.config import producer_config
from notifications.delivery.dedup import ConfirmResult, DedupStore
from notifications.redis_client import get_redis
from tests.campaigns.conftest import copy_users, make_campaign

pytestmark = [pytest.mark.django_db(transaction=True)]  # the live server's thread reads committed rows

WAIT_SECONDS = 10  # the progress panel polls every 2 s


class AdminPage:
    """The browser on the live server, logged in through the admin's login form."""

    def __init__(self, driver, base_url: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select, WebDriverWait

        self.driver, self.base_url = driver, base_url
        self.By, self.Select, self.WebDriverWait = By, Select, WebDriverWait

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def login(self, username: str, password: str) -> None:
        self.driver.delete_all_cookies()
        self.open("/admin/login/")
        self.css("#id_username").send_keys(username)
        self.css("#id_password").send_keys(password)
        self.css("input[type=submit]").click()
        self.wait(lambda d: "/admin/login/" not in d.current_url, "logged in")

    def css(self, selector: str, within=None):
        return (within or self.driver).find_element(self.By.CSS_SELECTOR, selector)

    def all(self, selector: str, within=None) -> list:
        return (within or self.driver).find_elements(self.By.CSS_SELECTOR, selector)

    def select(self, element, value: str) -> None:
        self.Select(element).select_by_value(value)

    def wait(self, condition: Callable[[Any], Any], message: str, timeout: float = WAIT_SECONDS):
        """Until ``condition`` is truthy. Elements of the page being left (a form just posted) go stale
        while it is read: that counts as "not yet"."""
        from selenium.common.exceptions import StaleElementReferenceException

        waiter = self.WebDriverWait(
            self.driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        return waiter.until(condition, message)

    def audience_json(self) -> Any:
        return json.loads(self.css("#id_audience").get_attribute("value"))

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        folder = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def page(browser, live_server, marketer):
    # The live server answers each request in a new thread: with persistent connections (CONN_MAX_AGE)
    # those threads would leave sessions open on the test database, and its teardown would fail.
    # (The dict is shared with the connection handler, so it is changed in place and put back.)
    database = settings.DATABASES["default"]
    max_age = database.get("CONN_MAX_AGE")
    database["CONN_MAX_AGE"] = 0
    admin = AdminPage(browser, live_server.url)
    admin.login("marketer", "pw-marketer-1")
    yield admin
    browser.get("about:blank")  # stop the progress panel's polling before the database is flushed
    database["CONN_MAX_AGE"] = max_age


# -- the builder's DOM, as a marketer sees it ------------------------------------------------------------
def root_group(page: AdminPage):
    return page.css("#audience-builder .ab-root")


def children(page: AdminPage, group) -> list:
    """The direct child nodes (conditions, groups, raw JSON) of a builder group."""
    return page.all(":scope > .ab-children > .ab-node", group)


def control(page: AdminPage, node, role: str):
    """A control of the node itself (not of a nested node): the field, op, value… of a condition, or the
    mode / NOT / buttons of a group."""
    if "ab-group" in node.get_attribute("class"):
        scope = ":scope > .ab-group-head" if role in ("mode", "not", "remove") else ":scope > .ab-group-foot"
        return page.css(f'{scope} [data-role="{role}"]', node)
    return page.css(f':scope > [data-role="{role}"], :scope > label > [data-role="{role}"]', node)


def describe(page: AdminPage, node) -> Any:
    """The builder's rendering of a node as plain data, read from the DOM (what is on the screen)."""
    classes = node.get_attribute("class")
    negated = control(page, node, "not").is_selected() if "ab-raw" not in classes else False
    if "ab-group" in classes:
        shown = {
            "mode": page.Select(control(page, node, "mode")).first_selected_option.get_attribute("value"),
            "items": [describe(page, child) for child in children(page, node)],
        }
    else:
        shown = {
            role.removeprefix("param-"): element.get_attribute("value")
            for element in page.all(":scope > [data-role]", node)
            for role in [element.get_attribute("data-role")]
            if role != "remove"
        }
    return {"not": shown} if negated else shown


def node_at(page: AdminPage, *path: int):
    """The builder node at a path of child indices from the root group, looked up afresh: a structural
    change re-renders the builder, so element references do not outlive one action."""
    node = root_group(page)
    for index in path:
        node = children(page, node)[index]
    return node


def add_condition(page: AdminPage, group: tuple[int, ...], *, field: str, op: str, value: str, params=None):
    """Add a condition to the group at ``group`` with the builder's controls, as a marketer would."""
    control(page, node_at(page, *group), "add-condition").click()
    index = len(children(page, node_at(page, *group))) - 1
    page.select(control(page, node_at(page, *group, index), "field"), field)
    for name, choice in (params or {}).items():
        page.select(control(page, node_at(page, *group, index), f"param-{name}"), choice)
    page.select(control(page, node_at(page, *group, index), "op"), op)
    element = control(page, node_at(page, *group, index), "value")
    if element.tag_name == "select":
        page.select(element, value)
    else:
        element.clear()
        element.send_keys(value)
    return (*group, index)


# -- the tests ---------------------------------------------------------------------------------------------
def test_builds_a_nested_predicate_saves_it_and_estimates_on_real_rows(page, promo_type, tmp_path):
    locales = ["de", "fr", "en", "de-ch"]
    ids = copy_users(
        24,
        locale=lambda i: locales[i % 4],
        document=lambda i: {"categories": {"marketing": {"email": False}}} if i % 3 == 0 else None,
    )
    expected_users = [uid for i, uid in enumerate(ids) if locales[i % 4] in ("de", "fr") and i % 3 != 0]

    page.open("/admin/campaigns/campaign/add/")
    page.css("#id_name").send_keys("DACH and France")
    page.select(page.css("#id_notification_type"), str(promo_type.pk))
    page.css('input[name="channels"][value="email"]').click()
    assert children(page, root_group(page)) == [] and "matches every active user" in root_group(page).text

    # (locale = de OR locale = fr) AND NOT opted out of marketing e-mail
    control(page, root_group(page), "add-group").click()  # a new group comes with one condition to fill in
    page.select(control(page, node_at(page, 0), "mode"), "any")
    control(page, node_at(page, 0, 0), "value").send_keys("de")
    add_condition(page, (0,), field="profile.locale", op="eq", value="fr")
    opted_out = add_condition(
        page,
        (),
        field="opted_out:<category>:<channel>",
        params={"category": "marketing", "channel": "email"},
        op="is",
        value="true",
    )
    control(page, node_at(page, *opted_out), "not").click()
    # An extra condition, removed again: remove works and leaves the rest alone.
    extra = add_condition(page, (), field="user.email", op="endswith", value="@example.org")
    assert page.audience_json()["all"][-1] == {"field": "user.email", "op": "endswith", "value": "@example.org"}
    control(page, node_at(page, *extra), "remove").click()

    predicate = {
        "all": [
            {
                "any": [
                    {"field": "profile.locale", "op": "eq", "value": "de"},
                    {"field": "profile.locale", "op": "eq", "value": "fr"},
                ]
            },
            {"not": {"field": "opted_out:marketing:email", "op": "is", "value": True}},
        ]
    }
    assert page.audience_json() == predicate, "the JSON field follows the builder"
    assert [e.text for e in page.all(".ab-root > .ab-children > .ab-join")] == ["AND"]
    assert [e.text for e in page.all(".ab-root .ab-group .ab-join")] == ["OR"]
    page.screenshot("builder-nested-add", tmp_path)

    page.css('input[name="_continue"]').click()
    page.wait(lambda d: "/change/" in d.current_url, "saved and back on the change page")
    campaign = Campaign.objects.get(name="DACH and France")
    assert campaign.audience == predicate
    assert audience_estimate(campaign).matching == len(expected_users) == 8

    page.css('#campaign-status input[value="Estimate audience size"]').click()
    message = page.wait(
        lambda d: next((e.text for e in page.all(".messagelist li") if "users match" in e.text), None), "estimate"
    )
    assert message == "DACH and France: 8 users match; reachable now — email: 8."


SAVED = {
    "all": [
        {
            "any": [
                {"field": "profile.locale", "op": "in", "value": ["de", "fr"]},
                {
                    "all": [
                        {"field": "attributes.plan", "op": "eq", "value": "pro"},
                        {"field": "attributes.seats", "op": "gte", "value": 10},
                    ]
                },
            ]
        },
        {
            "not": {
                "any": [
                    {"field": "muted", "op": "is", "value": True},
                    {"field": "reachable:sms", "op": "is", "value": False},
                ]
            }
        },
        {"field": "user.date_joined", "op": "within_days", "value": 30},
    ]
}


ATTRIBUTE = "attributes.<key>"


def test_a_saved_nested_predicate_is_rendered_and_round_trips(page, promo_type, tmp_path):
    campaign = make_campaign(promo_type, audience=SAVED, name="Loaded")
    page.open(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert describe(page, root_group(page)) == {
        "mode": "all",
        "items": [
            {
                "mode": "any",
                "items": [
                    {"field": "profile.locale", "op": "in", "value": "de, fr"},
                    {
                        "mode": "all",
                        "items": [
                            {
                                "field": "attributes.<key>",
                                "key": "plan",
                                "op": "eq",
                                "value": "pro",
                                "value-type": "string",
                            },
                            {
                                "field": "attributes.<key>",
                                "key": "seats",
                                "op": "gte",
                                "value": "10",
                                "value-type": "number",
                            },
                        ],
                    },
                ],
            },
            {
                "not": {
                    "mode": "any",
                    "items": [
                        {"field": "muted", "op": "is", "value": "true"},
                        {"field": "reachable:<channel>", "channel": "sms", "op": "is", "value": "false"},
                    ],
                }
            },
            {"field": "user.date_joined", "op": "within_days", "value": "30"},
        ],
    }
    page.screenshot("builder-nested-loaded", tmp_path)

    # Builder → JSON: an edit and its undo give back exactly the saved predicate (nothing lost on the way).
    mode = control(page, root_group(page), "mode")
    page.select(mode, "any")
    assert page.audience_json() == {"any": SAVED["all"]}
    page.select(control(page, root_group(page), "mode"), "all")
    assert page.audience_json() == SAVED
    control(page, node_at(page, 1), "remove").click()  # the NOT group, with what it holds
    assert page.audience_json() == {"all": [SAVED["all"][0], SAVED["all"][2]]}

    # JSON → builder: typing into the JSON field re-renders the builder once the text parses.
    textarea = page.css("#id_audience")
    textarea.clear()
    textarea.send_keys('{"any": [{"field": "profile.timezone", "op": "eq", "value": "Europe/Paris"}, {"all": []}]')
    assert page.css("#audience-builder .ab-status").is_displayed(), "half-typed JSON: the builder says so"
    textarea.send_keys("}")
    assert not page.css("#audience-builder .ab-status").is_displayed()
    assert describe(page, root_group(page)) == {
        "mode": "any",
        "items": [{"field": "profile.timezone", "op": "eq", "value": "Europe/Paris"}, {"mode": "all", "items": []}],
    }

    # The server stays the authority: a bad attribute key is refused on save, with the JSON path, and
    # the builder marks the node the path points at.
    page.open(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    key = control(page, node_at(page, 0, 1, 0), "param-key")
    key.clear()
    key.send_keys("9lives")
    assert page.audience_json()["all"][0]["any"][1]["all"][0]["field"] == "attributes.9lives"
    page.css('input[name="_continue"]').click()
    error = page.wait(lambda d: page.all(".field-audience .errorlist li"), "the form comes back with the error")[0]
    assert error.text.startswith("all[0].any[1].all[0].field: an attribute key is a letter")
    [marked] = page.all("#audience-builder .ab-invalid")
    assert "ab-cond" in marked.get_attribute("class")
    assert control(page, marked, "param-key").get_attribute("value") == "9lives"
    assert "all[0].any[1].all[0].field: an attribute key" in page.css(".ab-error", marked).text
    page.screenshot("builder-server-error", tmp_path)
    campaign.refresh_from_db()
    assert campaign.audience == SAVED


def test_live_progress_updates_without_a_reload(page, topics, promo_type, marketer, tmp_path):
    copy_users(6, locale="de")
    campaign = make_campaign(promo_type, channels=["email"], name="Live")
    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    campaign.refresh_from_db()
    orchestrator = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=get_redis(), batch_size=2)
    orchestrator.record_launches(
        [CampaignLaunch(launch_id=campaign.launch_id, campaign_id=campaign.pk, scheduled_for=campaign.launched_at)]
    )
    assert orchestrator.step(), "the first page: the campaign starts and batch 0 is emitted"
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.RUNNING and campaign.audience_size == 7  # 6 users and the marketer

    page.open(f"/admin/campaigns/campaign/{campaign.pk}/change/")

    def shown(key: str) -> str:
        return page.css(f'#campaign-status [data-k="{key}"]').text

    page.wait(lambda d: shown("percent") == "0", "the first poll fills the panel")
    assert (shown("state_label"), shown("batches_emitted"), shown("sent"), shown("audience_size")) == (
        "Running",
        "1",
        "0",
        "7",
    )
    page.driver.execute_script("window.sameDocument = true;")  # gone if the page reloads

    # The real writers: the orchestrator's next page, the expander's counters, the worker's outcomes.
    assert orchestrator.step()
    launch = str(campaign.launch_id)
    record_expansion(
        get_redis(),
        campaign_id=campaign.pk,
        launch_id=launch,
        channel="email",
        batch=0,
        cursor=2,
        queued=2,
        suppressed=0,
        extra=0,
        done=True,
    )
    sent = [f"{launch}:{i}:email" for i in range(2)]
    dedup = DedupStore(get_redis(), settings.REDIS_KEY_PREFIX)
    dedup.claim_many(sent)
    confirmed = dedup.confirm_many(sent, tallies=dict.fromkeys(sent, sent_tally(campaign.pk)))
    assert set(confirmed.values()) == {ConfirmResult.CONFIRMED}

    page.wait(lambda d: shown("sent") == "2", "the sent count moves without a reload")
    page.wait(lambda d: shown("batches_emitted") == "2", "so does the batch count")
    assert shown("queued") == "2" and shown("percent") == "28.6"  # 2 of 7 recipients
    assert page.driver.execute_script("return window.sameDocument === true;"), "no reload happened"
    width = page.driver.execute_script("return document.getElementById('campaign-progress-fill').style.width;")
    assert width == "28.6%"
    page.screenshot("progress-live", tmp_path)
