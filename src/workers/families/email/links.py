"""The links a mail may carry: only to PUBLIC_URL's host or a MAIL_LINK_HOSTS host, checked on the mail as sent.

Mail goes out from MAIL_FROM, so a link in it speaks for the operator: a caller's `url` in a template
variable, or an `href` in its own HTML, must not lead anywhere else (a perfect phishing mail otherwise).
The check reads what is about to be sent (the subject, a rendered template, a caller's HTML or text), so
a link from any source is seen: URL attributes (`href`, `src`, `srcset`, `action`, …), URLs written in
attribute values, text, comments (Outlook renders conditional ones) and styles, and URLs in a text body (mail
clients make them clickable). Allowed: `https://` (also `http://` in development) to an allowed host,
`mailto:` an address at an allowed host, `cid:` (a part of the message) and `#fragment`; everything
else (relative paths, `javascript:`, `data:`, user-info in the authority) is refused. With neither
PUBLIC_URL nor MAIL_LINK_HOSTS set, development allows any host (the forms are still checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Final
from urllib.parse import urlsplit

from pydantic import HttpUrl

from shared.core.settings import Environment, MailPolicyConfig

# Attributes whose value is a URL a client may follow or load.
_URL_ATTRIBUTES = frozenset(
    {"href", "src", "action", "formaction", "background", "poster", "cite", "longdesc", "lowsrc", "dynsrc",
     "usemap", "codebase", "data", "manifest", "icon", "xlink:href", "ping"}
)  # fmt: skip
# Declarations, not links (an XHTML mail's `<html xmlns="http://www.w3.org/1999/xhtml">`).
_NAMESPACE = re.compile(r"xmlns(:.*)?")
# Something a reader or a client takes for a link in free text: `scheme://host` or `www.host`.
_WRITTEN_URL = re.compile(r"(?i)(?:\b[a-z][a-z0-9+.\-]*:)?//[^\s<>\"'`()\[\]{}]+|\bwww\.[^\s<>\"'`()\[\]{}]+")
# What browsers drop from a URL before parsing it: tabs and newlines anywhere, C0 controls and spaces
# around it.
_INVISIBLE = re.compile(r"[\t\n\r]")
_SURROUNDING = "".join(chr(c) for c in range(0x21))


class LinkNotAllowed(Exception):
    """A link in the mail leads somewhere it may not."""


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    hosts: frozenset[str]
    allow_http: bool
    any_host: bool = False

    @classmethod
    def from_settings(cls, config: MailPolicyConfig, public_url: HttpUrl | None) -> LinkPolicy:
        """PUBLIC_URL's host and MAIL_LINK_HOSTS; with neither set, any host in development (as for
        recipients), none otherwise."""
        hosts = {h.strip().rstrip(".").lower() for h in config.link_hosts.split(",") if h.strip()}
        if public_url is not None and public_url.host:
            hosts.add(public_url.host.rstrip(".").lower())
        development = config.environment is Environment.DEVELOPMENT
        return cls(hosts=frozenset(hosts), allow_http=development, any_host=development and not hosts)

    def _refuse(self, url: str, why: str) -> LinkNotAllowed:
        allowed = ", ".join(sorted(self.hosts)) or "none: set PUBLIC_URL or MAIL_LINK_HOSTS"
        return LinkNotAllowed(f"the mail links to {url[:200]!r}, {why} (allowed link hosts: {allowed})")

    def _check_host(self, url: str, host: str | None) -> None:
        if not host or (not self.any_host and host.rstrip(".").lower() not in self.hosts):
            raise self._refuse(url, "a host mail may not link to")

    def check_link(self, raw: str) -> None:
        """A URL attribute's value: one of the allowed forms, to an allowed host.

        Raises:
            LinkNotAllowed: any other link.
        """
        url = _INVISIBLE.sub("", raw).strip(_SURROUNDING)
        if not url or url.startswith("#"):
            return
        scheme, _, rest = url.partition(":")
        scheme = scheme.lower()
        if scheme == "cid" and rest:
            return
        if scheme == "mailto":
            for address in rest.partition("?")[0].split(","):
                self._check_host(url, address.rpartition("@")[2] or None)
            return
        if scheme not in {"https", "http"} or not rest.startswith("//"):
            raise self._refuse(url, "not an absolute https link")
        if scheme == "http" and not self.allow_http:
            raise self._refuse(url, "plain http (only https outside development)")
        self._check_written(url)

    def _check_written(self, url: str) -> None:
        """A URL as written in text: its host must be allowed (a `www.` word is taken as a host too)."""
        if "\\" in url or any(c <= " " for c in url):
            raise self._refuse(url, "a link with characters a client may read differently")
        if url[:4].lower() == "www.":
            url = f"//{url}"
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as exc:
            raise self._refuse(url, "not a well-formed link") from exc
        if "@" in parts.netloc:
            raise self._refuse(url, "a link with a user name in it")
        self._check_host(url, host)

    def check_text(self, text: str) -> None:
        """Every URL written in `text` (a text body, or HTML text and comments)."""
        for match in _WRITTEN_URL.finditer(text):
            self._check_written(match[0].rstrip(".,;:!?"))

    def check_html(self, html: str) -> None:
        """Every link of an HTML body: URL attributes strictly, URLs written anywhere else by host."""
        for kind, value in _html_parts(html):
            if kind == "link":
                self.check_link(value)
            else:
                self.check_text(value)

    def check_mail(self, text: str | None, html: str | None, *, subject: str) -> None:
        """Raises LinkNotAllowed for the first link of the mail that may not be sent: in its subject (a
        client shows a URL there as text, and a reader may follow it), its text body, its HTML body."""
        self.check_text(subject)
        if text is not None:
            self.check_text(text)
        if html is not None:
            self.check_html(html)


class _Collector(HTMLParser):
    """Collects ("link", URL attribute value) and ("text", other attribute values, text, comments, styles)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None or _NAMESPACE.fullmatch(name):
                continue
            if name == "srcset" or name == "imagesrcset":
                self.parts += [("link", c.strip().split(" ")[0]) for c in value.split(",") if c.strip()]
            elif name in _URL_ATTRIBUTES:
                self.parts.append(("link", value))
            else:
                self.parts.append(("text", value))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.parts.append(("text", data))

    def handle_comment(self, data: str) -> None:
        # `<!--[if mso]>…<![endif]-->` is rendered by Outlook: its markup counts as the mail's own.
        self.parts += _html_parts(data) if "<" in data else [("text", data)]

    def unknown_decl(self, data: str) -> None:
        self.parts.append(("text", data))


def _html_parts(html: str) -> list[tuple[str, str]]:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.parts


# Attachments a mail client or a browser opens as a page, links and forms and all: HTML, XHTML, SVG (and
# MHTML, an HTML page with its parts, and a forwarded message). Their links are not checked, so a user may
# not attach them (an admin may).
_PAGE_TYPES: Final = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "multipart/related", "message/rfc822",
     "application/x-mimearchive", "application/hta"}
)  # fmt: skip
_PAGE_EXTENSIONS: Final = frozenset(
    {"htm", "html", "shtml", "xhtml", "xht", "svg", "svgz", "mht", "mhtml", "hta"}
)  # fmt: skip


def opens_as_a_page(filename: str, content_type: str) -> bool:
    """Whether an attachment would be shown as a web page (by its type, or by its name: clients go by
    either), where links the mail's check never saw could lead anywhere."""
    declared = content_type.partition(";")[0].strip().lower()
    # Windows drops trailing dots and spaces from a name: `x.html. ` opens as `x.html`.
    _, dot, extension = filename.rstrip(". ").rpartition(".")
    return (
        declared in _PAGE_TYPES
        or "html" in declared  # text/x-html, application/xhtml+xml, …
        or "svg" in declared
        or (bool(dot) and extension.lower() in _PAGE_EXTENSIONS)
    )
