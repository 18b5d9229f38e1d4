"""The console's themes: three Textual themes and the stylesheets that use
them.

Colours live only here (the theme's named colours) and reach widgets through
Textual's ``$variables`` in ``shoal.tcss``; Python code never names a colour,
so ``--theme`` and ``NO_COLOR`` apply to every widget at once.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

HERE = Path(__file__).resolve().parent
STYLESHEETS = [HERE / "shoal.tcss"]

DEFAULT_THEME = "shoal-dark"

THEMES: dict[str, Theme] = {
    "shoal-dark": Theme(
        name="shoal-dark",
        primary="#3a8fd6",
        secondary="#1f5f8f",
        accent="#f0a33c",
        warning="#e8b339",
        error="#e0566b",
        success="#4fbf7a",
        foreground="#d9dee4",
        background="#0f1419",
        surface="#161d24",
        panel="#1d2731",
        dark=True,
    ),
    "shoal-light": Theme(
        name="shoal-light",
        primary="#1f6fb2",
        secondary="#3d7fb8",
        accent="#b35c00",
        warning="#9a6700",
        error="#c0243c",
        success="#1a7f37",
        foreground="#1f2328",
        background="#f6f8fa",
        surface="#ffffff",
        panel="#e6ebf0",
        dark=False,
    ),
    # Pure black and white with saturated signal colours: for projectors,
    # low-vision operators and terminals with poor colour rendering.
    "shoal-high-contrast": Theme(
        name="shoal-high-contrast",
        primary="#00d7ff",
        secondary="#ffffff",
        accent="#ffff00",
        warning="#ffff00",
        error="#ff5f5f",
        success="#00ff5f",
        foreground="#ffffff",
        background="#000000",
        surface="#000000",
        panel="#1c1c1c",
        dark=True,
        luminosity_spread=0.0,
        text_alpha=1.0,
    ),
}

# Short names accepted by --theme and the palette.
ALIASES = {"dark": "shoal-dark", "light": "shoal-light", "high-contrast": "shoal-high-contrast", "hc": "shoal-high-contrast"}


def resolve(name: str) -> str | None:
    """The theme's full name, or None when Shoal has no such theme."""
    name = ALIASES.get(name, name)
    return name if name in THEMES else None
