"""Which recipients a user may mail, and which links a mail may carry: the rules, case by case."""

from __future__ import annotations

import pytest
from pydantic import HttpUrl

from shared.core.settings import Environment, MailPolicyConfig
from shared.jobtypes.email_policy import RecipientPolicy, distinct_recipients
from workers.families.email.links import LinkNotAllowed, LinkPolicy, opens_as_a_page

PRODUCTION, DEVELOPMENT = Environment.PRODUCTION, Environment.DEVELOPMENT


def _recipients(allowed: str, environment: Environment = PRODUCTION, *, admin: bool = False) -> RecipientPolicy:
    return RecipientPolicy.for_role(MailPolicyConfig(allowed_recipients=allowed, environment=environment), admin=admin)


def test_an_empty_list_means_anyone_in_development_and_nobody_otherwise() -> None:
    assert _recipients("", DEVELOPMENT).allows("anyone@anywhere.example")
    assert not _recipients("", PRODUCTION).allows("anyone@anywhere.example")
    assert _recipients("", PRODUCTION, admin=True).allows("anyone@anywhere.example")


def test_domains_match_exactly_and_addresses_as_written_in_any_case() -> None:
    policy = _recipients(" Example.com , ops@other.org ,")

    assert policy.allows("ann@example.com")
    assert policy.allows("ANN@EXAMPLE.COM.")
    assert policy.allows("Ops@Other.org")
    assert not policy.allows("dev@other.org")
    assert not policy.allows("ann@mail.example.com"), "a sub-domain is listed on its own"
    assert not policy.allows("ann@example.com.evil.example")
    assert not policy.allows("example.com@evil.example")


def test_a_listed_list_is_also_what_development_allows() -> None:
    assert not _recipients("example.com", DEVELOPMENT).allows("bob@evil.example")


def test_international_domains_match_in_either_spelling() -> None:
    assert _recipients("bücher.example").allows("ann@xn--bcher-kva.example")
    assert _recipients("xn--bcher-kva.example").allows("ann@bücher.example")


def test_an_address_listed_twice_is_one_recipient() -> None:
    assert distinct_recipients(["a@example.com", "A@Example.com", "b@example.com"]) == 2


def _links(hosts: str = "", environment: Environment = PRODUCTION) -> LinkPolicy:
    config = MailPolicyConfig(link_hosts=hosts, environment=environment)
    return LinkPolicy.from_settings(config, HttpUrl("https://jobs.example.com/base/"))


@pytest.mark.parametrize(
    "html",
    [
        '<a href="https://jobs.example.com/login?a=1&amp;b=2">in</a>',
        '<a href="HTTPS://JOBS.EXAMPLE.COM:8443/x">port and case</a>',
        '<a href="#top">fragment</a> <img src="cid:logo@conveyor">',
        '<a href="mailto:help@jobs.example.com?subject=Hi">mail us</a>',
        '<img srcset="https://cdn.example.net/a.png 1x, https://cdn.example.net/b.png 2x">',
        '<html xmlns="http://www.w3.org/1999/xhtml"><p>no links, 3 // 4</p></html>',
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">',
        "<p>Visit https://jobs.example.com/docs.</p>",
    ],
)
def test_links_to_allowed_hosts_pass(html: str) -> None:
    _links("cdn.example.net").check_html(html)


@pytest.mark.parametrize(
    "html",
    [
        '<a href="https://evil.example/login">x</a>',
        '<a href="https://jobs.example.com.evil.example/">a look-alike</a>',
        '<a href="https://jobs.example.com@evil.example/">user-info</a>',
        '<a href="https://evil.example\\@jobs.example.com/">a backslash browsers read as a slash</a>',
        '<a href="//evil.example/">scheme-relative</a>',
        '<a href="https:evil.example">no slashes</a>',
        '<a href="/login">relative</a>',
        '<a href="javascript:alert(1)">script</a>',
        '<a href="java\tscript:alert(1)">split script</a>',
        '<a href="data:text/html,&lt;script&gt;">data</a>',
        '<a href="http://jobs.example.com/">plain http outside development</a>',
        '<a href="&#104;ttps://evil.example/">an entity</a>',
        '<a href="mailto:boss@evil.example">mail</a>',
        '<form action="https://evil.example/collect"><input></form>',
        '<img srcset="https://jobs.example.com/a.png 1x, https://evil.example/b.png 2x">',
        '<div style="background:url(https://evil.example/pixel.png)">x</div>',
        "<style>body { background: url('https://evil.example/pixel.png') }</style>",
        '<meta http-equiv="refresh" content="0; url=https://evil.example/">',
        '<!--[if mso]><v:roundrect href="https://evil.example/"></v:roundrect><![endif]-->',
        "<p>Go to https://evil.example/login now</p>",
        "<p>Go to www.evil.example now</p>",
    ],
)
def test_links_anywhere_else_are_refused(html: str) -> None:
    with pytest.raises(LinkNotAllowed):
        _links().check_html(html)


def test_http_is_allowed_in_development_only() -> None:
    _links(environment=DEVELOPMENT).check_html('<a href="http://jobs.example.com/">dev</a>')


def test_text_bodies_are_checked_for_written_urls() -> None:
    policy = _links()
    policy.check_text("Sign in at https://jobs.example.com/login, then see you.")
    with pytest.raises(LinkNotAllowed, match=r"evil\.example"):
        policy.check_text("Sign in at https://evil.example/login")
    with pytest.raises(LinkNotAllowed):
        policy.check_text("Sign in at ftp://evil.example/")


@pytest.mark.parametrize("environment", [PRODUCTION, Environment.TEST])
def test_with_no_public_url_and_no_listed_host_no_link_is_allowed(environment: Environment) -> None:
    policy = LinkPolicy.from_settings(MailPolicyConfig(environment=environment), None)
    policy.check_mail("No links here.", "<p>Nor here.</p>", subject="Nor in the subject")
    with pytest.raises(LinkNotAllowed, match="set PUBLIC_URL or MAIL_LINK_HOSTS"):
        policy.check_mail(None, '<a href="https://example.com/">x</a>', subject="Hi")


def test_with_nothing_configured_development_links_anywhere_but_still_checks_the_forms() -> None:
    policy = LinkPolicy.from_settings(MailPolicyConfig(environment=DEVELOPMENT), None)
    policy.check_mail("See https://example.com/x", '<a href="http://example.org/">x</a>', subject="https://example.net")
    with pytest.raises(LinkNotAllowed):
        policy.check_html('<a href="javascript:alert(1)">x</a>')


@pytest.mark.parametrize(
    "subject", ["Locked: unlock at https://evil.example/unlock", "Go to www.evil.example", "ftp://evil.example/"]
)
def test_the_subject_is_checked_like_a_text_body(subject: str) -> None:
    policy = _links()
    policy.check_mail("x", None, subject="Your report from https://jobs.example.com/jobs")
    with pytest.raises(LinkNotAllowed, match=r"evil\.example"):
        policy.check_mail("x", "<p>x</p>", subject=subject)


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("page.html", "text/html; charset=utf-8"),
        ("report.csv", "text/html"),
        ("report.csv", "TEXT/HTML"),
        ("page.HTM", "application/octet-stream"),
        ("page.xhtml", "application/xhtml+xml"),
        ("logo.svg", "image/svg+xml"),
        ("logo.png", "image/svg+xml"),
        ("logo.svgz", "application/gzip"),
        ("saved.mht", "application/octet-stream"),
        ("app.hta", "application/octet-stream"),
        ("invoice.html. ", "text/plain"),
    ],
)
def test_attachments_that_open_as_a_page_are_recognised_by_type_or_name(filename: str, content_type: str) -> None:
    assert opens_as_a_page(filename, content_type)


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("report.csv", "text/csv; charset=utf-8"),
        ("report.pdf", "application/pdf"),
        ("logo.png", "image/png"),
        ("html", "text/plain"),
        ("notes.html.txt", "text/plain"),
        ("data.xml", "application/xml"),
    ],
)
def test_other_attachments_are_not_pages(filename: str, content_type: str) -> None:
    assert not opens_as_a_page(filename, content_type)
