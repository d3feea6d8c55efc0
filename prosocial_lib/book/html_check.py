"""The offline HTML check: a built page must not load anything from the network when opened.

Every src/href-like attribute, inline <script> and <style>, style= attribute and every shipped CSS
file (url(), @import) is read; remote loads and missing local files are reported. Used by
:func:`~prosocial_lib.book.builder.build_book` after every build.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

# ---------------------------------------------------------------------------------------------- HTML check
# Elements and the attributes through which they load something as the page opens.
_LOADING_ATTRS = {"script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
                  "audio": ("src",), "video": ("src", "poster"), "track": ("src",), "embed": ("src",),
                  "object": ("data",), "input": ("src",), "link": ("href",), "image": ("href", "xlink:href"),
                  "use": ("href", "xlink:href")}


# <link> relations that fetch (or connect to) their href; others (canonical, next, author...) are plain links.
_LOADING_RELS = {"stylesheet", "preload", "prefetch", "icon", "modulepreload", "manifest", "preconnect",
                 "dns-prefetch"}


# <script> types the browser runs (MathJax 2 runs its config blocks); JSON and template blocks are data.
_SCRIPT_TYPES = {"", "text/javascript", "application/javascript", "module", "text/ecmascript",
                 "application/ecmascript", "text/x-mathjax-config"}


# An absolute or protocol-relative URL in a JavaScript string literal (requirejs paths, import(), fetch, ...).
_JS_URL = re.compile(r"""["'`]((?:https?:|wss?:)?//[A-Za-z0-9][^"'`\s]*)""")


# Script text that names a URL without loading it as the page opens: sphinx-thebe fetches THEBE_JS_URL only when
# the reader clicks "live code"; XML namespaces (document.createElementNS) are names, not addresses.
_JS_NOT_LOADS = (re.compile(r"""\bTHEBE_JS_URL\s*=\s*(["'`])[^"'`]*\1"""),)


_XML_NAMESPACES = ("http://www.w3.org/", "https://www.w3.org/")


_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)"'\s]*))\s*\)""", re.IGNORECASE)


_CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)  # `@import url(...)` is a url()


def check_html(html_dir: Path, forbidden: Sequence[str | Path] = ()) -> list[str]:
    """Problems a reader would hit: network loads, broken local links/images, tracebacks, papermill errors, and
    text that leaks the build machine or the library's internals (:func:`leak_problems`).

    Network loads are looked for in the loading attributes of every page (``src``, ``srcset``, ``href`` of
    stylesheets and icons, ...), in the text of every inline ``<script>`` and ``<style>``, in ``style``
    attributes, and in ``url()``/``@import`` of every CSS file shipped with the book.

    Args:
        html_dir: the built HTML (``_build/html``).
        forbidden: strings no page may show besides :data:`LEAK_PATTERNS` (the builder passes the runs folder,
            the repository root and the build folder).

    Returns:
        Human-readable problems, empty when the book is clean.
    """
    html_dir = Path(html_dir)
    # _static holds theme templates (Jinja, not pages) and _sources the reStructuredText/notebook sources.
    pages = sorted(p for p in html_dir.rglob("*.html")
                   if p.relative_to(html_dir).parts[0] not in ("_static", "_sources"))
    if not pages:
        return [f"{html_dir}: no HTML pages"]
    problems = [problem for page in pages for problem in _page_problems(page, page.relative_to(html_dir))]
    problems += [problem for page in pages for problem in leak_problems(page, page.relative_to(html_dir), forbidden)]
    for css in sorted(html_dir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        problems += _css_problems(text, css, f"{css.relative_to(html_dir)}:")
    return problems


def _page_problems(page: Path, rel: Path) -> list[str]:
    """The problems of one page (see :func:`check_html`), each starting with ``rel``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(encoding="utf-8", errors="replace"), "html.parser")
    problems = _element_load_problems(soup, page, rel) + _inline_load_problems(soup, page, rel)
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if not _is_remote(href) and not href.startswith(("mailto:", "javascript:")) and not _resolves(page, href):
            problems.append(f"{rel}: link to missing {href}")
    if soup.find(class_=lambda c: c and "traceback" in c.split()) is not None:
        problems.append(f"{rel}: shows a Python traceback")
    if soup.find(id="papermill-error-cell") is not None or "papermill-error-cell" in str(soup):
        problems.append(f"{rel}: contains papermill's error cell (a notebook failed)")
    return problems


# ---------------------------------------------------------------------------------------------- leaks
#: What no page may show, wherever the book was built: (pattern, what it is). Text inside <script> and <style> is
#: not read (data for the interactive tables, the theme's code), everything else is: prose, tables, code, outputs.
LEAK_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(?<![\w.])/tmp/"), "a path under /tmp/"),
    (re.compile(r"site-packages|dist-packages"), "a path into the installed packages"),
    (re.compile(r"(?<![\w/])/(?:home|root|Users|work)/[\w.-]+/"), "an absolute path of the build machine"),
    (re.compile(r"\b[A-Z]\w*Warning: "), "a library warning"),
    (re.compile(r"^\s*warnings\.warn\(", re.MULTILINE), "a warning's source line"),
    (re.compile(r"reusing the finished checkpoint", re.IGNORECASE), "a log line of the training loop"),
    (re.compile(r"\bthe issue that asked\b|\bissue #\d+", re.IGNORECASE), "a reference to the project's issues"),
)
#: Internal keys a table cell or figure caption must not show instead of a name (the model key "embedded").
INTERNAL_CELL_VALUES = frozenset({"embedded"})


def leak_problems(page: Path, rel: Path, forbidden: Sequence[str | Path] = ()) -> list[str]:
    """Text of one page that leaks the build machine (its paths), a library's warnings or internal keys.

    Args:
        page: the HTML file.
        rel: its name in the messages.
        forbidden: further strings the page must not contain (paths of this build).

    Returns:
        Human-readable problems, one per kind of leak and page.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(encoding="utf-8", errors="replace"), "html.parser")
    for tag in soup.find_all(["script", "style", "noscript"]):
        tag.decompose()
    main = soup.find("main") or soup.body or soup
    text = main.get_text("\n")
    problems = []
    for needle in dict.fromkeys(str(f) for f in forbidden if str(f).strip("/")):
        if needle in text:
            problems.append(f"{rel}: shows a path of the build machine ({_excerpt(text, text.index(needle))})")
    for pattern, what in LEAK_PATTERNS:
        match = pattern.search(text)
        if match:
            problems.append(f"{rel}: shows {what} ({_excerpt(text, match.start())})")
    stderr = main.find(class_=lambda c: c and "stderr" in c.split())
    if stderr is not None:  # a library's warning or log line: the chapter should collect it or switch it off
        problems.append(f"{rel}: shows output written to stderr ({_excerpt(stderr.get_text(' '), 0)})")
    cells = {c.get_text(strip=True) for c in main.find_all(["td", "th", "figcaption", "caption"])}
    for value in sorted(cells & INTERNAL_CELL_VALUES):
        problems.append(f"{rel}: a table shows the internal key {value!r} instead of a name")
    return problems


def _excerpt(text: str, at: int, width: int = 60) -> str:
    return " ".join(text[max(0, at - width // 3): at + width].split())


def _element_load_problems(soup, page: Path, rel: Path) -> list[str]:
    """Remote or missing targets of the loading attributes (:data:`_LOADING_ATTRS`) of a parsed page."""
    problems = []
    for tag in soup.find_all(list(_LOADING_ATTRS)):
        if tag.name == "link" and not set(tag.get("rel") or []) & _LOADING_RELS:
            continue
        for attr in _LOADING_ATTRS[tag.name]:
            value = tag.get(attr) or ""
            urls = [c.split()[0] for c in re.split(r",\s+", value) if c.strip()] if attr == "srcset" else [value]
            for url in filter(None, (u.strip() for u in urls)):
                if _is_remote(url):
                    problems.append(f"{rel}: <{tag.name}> loads {url} from the network")
                elif not _resolves(page, url):
                    problems.append(f"{rel}: <{tag.name}> points to missing {url}")
    return problems


def _inline_load_problems(soup, page: Path, rel: Path) -> list[str]:
    """Network loads named in inline scripts, inline styles and ``style`` attributes of a parsed page."""
    problems = []
    for script in soup.find_all("script"):
        kind = (script.get("type") or "").split(";")[0].strip().lower()
        if script.get("src") or kind not in _SCRIPT_TYPES:
            continue
        text = script.get_text().replace("\\/", "/")  # JSON-escaped slashes: "https:\/\/cdn..."
        for pattern in _JS_NOT_LOADS:
            text = pattern.sub("", text)
        for url in _JS_URL.findall(text):
            if not url.startswith(_XML_NAMESPACES):
                problems.append(f"{rel}: an inline <script> loads {url} from the network")
    for style in soup.find_all("style"):
        problems += _css_problems(style.get_text(), page, f"{rel}: an inline <style>")
    for tag in soup.find_all(style=True):
        problems += _css_problems(tag["style"], page, f"{rel}: the style attribute of <{tag.name}>")
    return problems


def _css_problems(text: str, base: Path, where: str) -> list[str]:
    """Remote and missing targets of ``url()`` and ``@import`` in CSS ``text``.

    Args:
        text: a stylesheet, an inline ``<style>`` or a ``style`` attribute.
        base: the file relative URLs are resolved against (the CSS file, or the page for inline CSS).
        where: how the problems start (e.g. ``"_static/x.css:"``).

    Returns:
        Human-readable problems.
    """
    text = _CSS_COMMENT.sub("", text)
    urls = [next(g for g in m.groups() if g is not None) for m in _CSS_URL.finditer(text)]
    urls += [next(g for g in m.groups() if g is not None) for m in _CSS_IMPORT.finditer(text)]
    problems = []
    for url in filter(None, (u.strip() for u in urls)):
        if _is_remote(url):
            problems.append(f"{where} loads {url} from the network")
        elif not _resolves(base, url):
            problems.append(f"{where} points to missing {url}")
    return problems


def _is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "//", "ftp://", "ws://", "wss://"))


def _resolves(page: Path, url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme or not parts.path:  # data:, blob:, or a same-page fragment
        return True
    return (page.parent / unquote(parts.path)).exists()
