#!/usr/bin/python3
"""A real browser through the web server flow: headless Chromium driven by
selenium's webdriver (Debian's chromium, chromium-driver and
python3-selenium: run it with Debian's /usr/bin/python3).

  console_browser.py --console URL --credential NAME [options]
      opens the console page (URL), saves its screenshot (--screenshot),
      clicks the Connect button of the form whose hidden "credential" is
      NAME, logs in on the mock Salesforce's login page, presses Allow (or
      Deny) on its consent page, and waits for the browser to leave the
      mock: the callback's page.  With --confirm, presses the button of a
      confirm form there (a reconnect to another org or user).  With
      --screenshot-after, opens the console again and saves its screenshot.

  console_browser.py --authorize URL [options]
      the mock's pages alone: from an authorize URL of the mock to its
      redirect_uri, wherever that is.

Options: --user (admin@acme) and --password (the mock's for that user),
--deny, --timeout S (30 by default, per step), --chromium, --chromedriver
(Debian's paths by default).  A wrong password ends the flow at the login
page, with the error "the login was refused: " and the page's message.
--wait-login S: how long the login page may take to come, when it should
not come at all (the --timeout by default).

It prints one JSON object: ok (the flow got where it should), error (what
went wrong, when not ok), steps (each: what was done and the URL then),
final_url, title and text (the final page's title and visible text, cut at
4000 characters), screenshot and screenshot_after (the PNG files written),
connect_form (the clicked form's action and method).
Exit status: 0 when ok, 1 when not, 2 when the browser could not start.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time

USERS = {"admin@acme": "acme-password", "other@globex": "globex-password"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--console")
    ap.add_argument("--authorize")
    ap.add_argument("--credential", default="crm")
    ap.add_argument("--user", default="admin@acme")
    ap.add_argument("--password")
    ap.add_argument("--deny", action="store_true")
    ap.add_argument("--confirm", action="store_true")
    ap.add_argument("--screenshot")
    ap.add_argument("--screenshot-after")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--wait-login", type=float)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    if bool(args.console) == bool(args.authorize):
        ap.error("give one of --console and --authorize")
    if args.password is None:
        args.password = USERS.get(args.user, "")

    result = {"ok": False, "error": None, "steps": [], "final_url": None,
              "title": None, "text": None, "screenshot": None,
              "screenshot_after": None, "connect_form": None}

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.common.exceptions import WebDriverException
    except ImportError as e:
        result["error"] = "no selenium: %s" % e
        print(json.dumps(result))
        return 2

    profile = tempfile.mkdtemp(prefix="console_browser_")
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--no-first-run",
              "--no-default-browser-check", "--disable-extensions",
              "--window-size=1280,900", "--user-data-dir=" + profile):
        opts.add_argument(a)
    try:
        driver = webdriver.Chrome(service=Service(args.chromedriver),
                                  options=opts)
    except Exception as e:  # noqa: BLE001 (reported, not raised)
        result["error"] = "the browser did not start: %s" % (
            str(e).splitlines() or [repr(e)])[0]
        print(json.dumps(result))
        shutil.rmtree(profile, ignore_errors=True)
        return 2

    driver.set_page_load_timeout(args.timeout)

    # a look at the page while the browser navigates may fail ("aborted
    # by navigation": CI run 13): the waits look again until the timeout
    wait = WebDriverWait(driver, args.timeout, poll_frequency=0.1,
                         ignored_exceptions=(WebDriverException,))

    def step(what):
        result["steps"].append({"step": what, "url": driver.current_url,
                                "at": round(time.time(), 3)})

    def loaded(_):
        return driver.execute_script("return document.readyState") \
            == "complete"

    try:
        if args.console:
            driver.get(args.console)
            wait.until(loaded)
            step("console")
            if args.screenshot:
                driver.save_screenshot(args.screenshot)
                result["screenshot"] = args.screenshot
            forms = driver.find_elements(
                By.XPATH, "//form[.//input[@type='hidden' and "
                "@name='credential' and @value=%s]]"
                % xpath_literal(args.credential))
            if not forms:
                raise Flow("no Connect form for credential %r on the "
                           "console page" % args.credential)
            form = forms[0]
            result["connect_form"] = {
                "action": form.get_attribute("action"),
                "method": form.get_attribute("method")}
            buttons = form.find_elements(
                By.XPATH, ".//button[not(@type) or @type='submit'] | "
                ".//input[@type='submit']")
            if not buttons:
                raise Flow("the Connect form has no button")
            buttons[0].click()
        else:
            driver.get(args.authorize)

        WebDriverWait(driver, args.wait_login or args.timeout,
                      poll_frequency=0.1,
                      ignored_exceptions=(WebDriverException,)).until(
            EC.presence_of_element_located((By.ID, "login")))
        wait.until(loaded)
        step("login page")
        driver.find_element(By.ID, "username").clear()
        driver.find_element(By.ID, "username").send_keys(args.user)
        driver.find_element(By.ID, "password").send_keys(args.password)
        login_form = driver.find_element(By.ID, "login")
        driver.find_element(By.ID, "Login").click()

        # the consent page, or the login page again with its error (a
        # wrong password): whichever comes, not a timeout
        wait.until(lambda d: d.find_elements(By.ID, "consent")
                   or (stale(login_form)
                       and d.find_elements(By.ID, "error")))
        wait.until(loaded)
        if not driver.find_elements(By.ID, "consent"):
            raise Flow("the login was refused: %s" % driver.find_element(
                By.ID, "error").text)
        step("consent page")
        mock_origin = origin(driver.current_url)
        driver.find_element(By.ID, "oadeny" if args.deny
                            else "oaapprove").click()

        # the redirect to the callback: the browser leaves the mock
        wait.until(lambda d: origin(d.current_url) != mock_origin
                   or "/services/oauth2/" not in d.current_url)
        wait.until(loaded)
        step("callback")

        if args.confirm:
            confirm = driver.find_elements(
                By.XPATH, "//form[contains(@action, 'confirm')]"
                "//*[self::button or (self::input and @type='submit')]")
            if not confirm:
                raise Flow("no confirm form on the callback's page")
            before = driver.current_url
            confirm[0].click()
            wait.until(lambda d: d.current_url != before
                       or not d.find_elements(
                           By.XPATH, "//form[contains(@action, 'confirm')]"))
            wait.until(loaded)
            step("confirm")

        result["final_url"] = driver.current_url
        result["title"] = driver.title
        result["text"] = driver.find_element(By.TAG_NAME, "body").text[:4000]

        if args.console and args.screenshot_after:
            driver.get(args.console)
            wait.until(loaded)
            step("console again")
            driver.save_screenshot(args.screenshot_after)
            result["screenshot_after"] = args.screenshot_after
        result["ok"] = True
    except Flow as e:
        result["error"] = str(e)
    except Exception as e:  # noqa: BLE001 (a timeout, a missing element)
        result["error"] = "%s: %s" % (type(e).__name__,
                                      (str(e).splitlines() or [""])[0])
    finally:
        if not result["ok"]:
            try:
                result["final_url"] = driver.current_url
                result["title"] = driver.title
                result["text"] = driver.find_element(
                    By.TAG_NAME, "body").text[:4000]
            except Exception:  # noqa: BLE001 (the page may be gone)
                pass
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

    print(json.dumps(result))
    return 0 if result["ok"] else 1


class Flow(Exception):
    """The pages were not what a browser expects."""


def origin(url):
    from urllib.parse import urlsplit
    u = urlsplit(url)
    return "%s://%s" % (u.scheme, u.netloc)


def stale(element):
    """True when ELEMENT's page was left (a new page was loaded)."""
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True


def xpath_literal(s):
    if "'" not in s:
        return "'%s'" % s
    if '"' not in s:
        return '"%s"' % s
    return "concat('%s')" % "', \"'\", '".join(s.split("'"))


if __name__ == "__main__":
    sys.exit(main())
