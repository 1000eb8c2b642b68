"""Google Drive: the download request for a file id, and the way past its confirmation page.

Large files answer ``uc?export=download&id=…`` with a "can't scan this file for viruses" page
instead of the file; :func:`confirm_request` reads the request that gets the file from it.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from html.parser import HTMLParser
from typing import Dict, List, Optional, Tuple

__all__ = ["GDRIVE_URL", "GDriveRefused", "download_request", "confirm_request"]

#: Google Drive's download endpoint; ``REPZOO_GDRIVE_URL`` replaces it (tests, proxies).
GDRIVE_URL = "https://drive.google.com/uc"


class GDriveRefused(Exception):
    """Google Drive answered with a page that leads to no file (quota, private, removed)."""


def download_request(file_id: str) -> Tuple[str, Dict[str, str]]:
    """``(url, params)`` of the first request for a Drive file id."""
    base = os.environ.get("REPZOO_GDRIVE_URL", GDRIVE_URL).strip()
    return base, {"export": "download", "id": file_id}


class _PageParser(HTMLParser):
    """Collects the forms (action, method, inputs) and the links of a web page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: List[Dict[str, object]] = []
        self.links: List[str] = []
        self._form: Optional[Dict[str, object]] = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                          "id": a.get("id", ""), "inputs": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            self._form["inputs"][a["name"]] = a.get("value", "")  # type: ignore[index]
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def confirm_request(page: Tuple[str, str], url: str, params: Dict[str, str]) -> Tuple[str, Dict[str, str]]:
    """From Google Drive's "can't scan this file for viruses" page, the request that gets the file.

    The page is a form (``id="download-form"``, action ``…/download``, hidden inputs ``id``,
    ``export``, ``confirm``, ``uuid``) to submit with GET; older pages carry a link with
    ``confirm=<token>`` instead.
    """
    html, page_url = page
    parser = _PageParser()
    parser.feed(html)
    forms = [f for f in parser.forms if f["inputs"] and f["method"] == "get"]
    forms.sort(key=lambda f: (f["id"] != "download-form", "confirm" not in f["inputs"]))  # type: ignore[operator]
    if forms and ("confirm" in forms[0]["inputs"] or forms[0]["id"] == "download-form"):  # type: ignore[operator]
        form = forms[0]
        action = urllib.parse.urljoin(page_url, str(form["action"]) or page_url)
        return action, dict(form["inputs"])  # type: ignore[arg-type]
    for href in parser.links:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
        if "confirm" in query:
            target = urllib.parse.urljoin(page_url, href)
            return target, {}
    m = re.search(r"confirm=([0-9A-Za-z_-]+)", html)
    if m:
        return url, {**params, "confirm": m.group(1)}
    lowered = html.lower()
    if "quota" in lowered or "too many users" in lowered:
        raise GDriveRefused("Google Drive refused: the file's download quota is exceeded; try again in a day "
                      "or download it by hand")
    raise GDriveRefused("Google Drive answered with a web page and no download link (the file may be private "
                  "or removed)")
