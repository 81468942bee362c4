"""Wrap a document's content in a realistic HTML page (nav, cookie banner, sidebar, footer)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

# style -> (menu entries, sidebar heading, sidebar links)
_CHROME: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "biography": (
        ("Home", "People", "Stories", "Submit a profile", "About"),
        "Popular profiles",
        ("Most read this week", "Editor's picks", "Random profile"),
    ),
    "encyclopedia": (
        ("Main page", "Contents", "Random article", "Help", "Donate"),
        "Tools",
        ("What links here", "Related changes", "Cite this page", "Printable version"),
    ),
    "news": (
        ("Home", "Local", "Business", "Culture", "Sport", "Opinion"),
        "Most read",
        ("Weather warning for the weekend", "Council approves new budget", "Letters to the editor"),
    ),
    "forum": (
        ("Forums", "New posts", "Members", "Search", "Log in"),
        "Similar threads",
        ("Introduce yourself here", "Off-topic chat", "Forum rules, please read"),
    ),
    "company": (
        ("Companies", "Jobs", "Salaries", "Post a job", "Sign in"),
        "Related searches",
        ("Jobs near you", "Top employers", "Salary guide"),
    ),
    "travel": (
        ("Destinations", "Itineraries", "Hotels", "Tips", "Newsletter"),
        "Plan your trip",
        ("Packing checklist", "Travel insurance explained", "Best time to visit"),
    ),
    "aggregator": (
        ("Top stories", "Latest", "Trending", "Archive", "About us"),
        "Trending now",
        ("Stories you may have missed", "Reader favourites", "From around the web"),
    ),
    "shop": (
        ("Home", "Deals", "Best sellers", "Cart", "Checkout"),
        "Hot offers",
        ("Free shipping today", "Clearance sale", "Gift cards"),
    ),
}


def _site_name(site: str) -> str:
    parts = site.split(".")
    core = parts[1] if parts[0] in ("www", "en", "forum", "boards", "jobs") and len(parts) > 2 else parts[0]
    return core.capitalize()


def _block(site: str, tag: str, text: str, index: int) -> str:
    if tag == "a":  # a paragraph that is a single link (link farms)
        return f'      <p><a href="https://{site}/go/{index}">{escape(text)}</a></p>'
    return f"      <{tag}>{escape(text)}</{tag}>"


def render_page(
    site: str, url: str, style: str, title: str, blocks: Sequence[tuple[str, str]], lang: str = "en"
) -> str:
    """A full HTML page whose `<main><article>` holds the title and the blocks ("h2", "p", or "a" for a link)."""
    name = _site_name(site)
    menu, side_title, side_links = _CHROME[style]
    nav = "\n".join(f'        <li><a href="https://{site}/{i}">{escape(item)}</a></li>' for i, item in enumerate(menu))
    side = "\n".join(
        f'        <li><a href="https://{site}/s/{i}">{escape(link)}</a></li>' for i, link in enumerate(side_links)
    )
    body = "\n".join(_block(site, tag, text, i) for i, (tag, text) in enumerate(blocks))
    return f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
  <meta charset="utf-8">
  <title>{escape(title)} | {name}</title>
  <link rel="canonical" href="{escape(url)}">
  <meta name="viewport" content="width=device-width, initial-scale=1">
</head>
<body>
  <div class="cookie-banner" id="cookies">
    <p>We use cookies to improve your experience. By continuing to browse you agree to our use of cookies.</p>
    <button>Accept all</button> <button>Manage preferences</button>
  </div>
  <header>
    <a class="logo" href="https://{site}/">{name}</a>
    <nav>
      <ul>
{nav}
      </ul>
    </nav>
  </header>
  <main>
    <article>
      <h1>{escape(title)}</h1>
{body}
    </article>
  </main>
  <aside class="sidebar">
    <h3>{escape(side_title)}</h3>
    <ul>
{side}
    </ul>
    <p class="newsletter">Sign up for our newsletter and never miss an update.</p>
  </aside>
  <footer>
    <p>&copy; 2024 {name}. All rights reserved.</p>
    <p><a href="https://{site}/privacy">Privacy policy</a> | <a href="https://{site}/terms">Terms of use</a> | <a href="https://{site}/contact">Contact</a></p>
  </footer>
</body>
</html>
"""
