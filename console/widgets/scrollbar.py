"""Keep a scrollbar from being redrawn when its thumb does not move.

Textual redraws a scrollbar whenever its position changes: on a 100,000-row
table, every scroll by one row re-renders all its lines (about as much work
as the table's own new line, and more than the rest of the frame), though
the thumb moves by one eighth of a cell only every few hundred rows.
``quiet_position`` gives the bar its new position without that redraw when
the thumb's extent (in eighths of a cell, as Textual's ``ScrollBarRender``
draws it) stays the same, through public API only: ``set_reactive`` sets
the value without the reactive's repaint, and the widget's own
``watch_scroll_y`` then finds the position already set and does nothing.
"""

from __future__ import annotations

from math import ceil

from textual.scrollbar import ScrollBar


def thumb(bar: ScrollBar, position: float) -> tuple[int, int]:
    """The thumb's first and last eighth of a cell at ``position`` (the
    sums of ScrollBarRender.render_bar)."""
    size = bar.size.height if bar.vertical else bar.size.width
    virtual = bar.window_virtual_size
    window = bar.window_size if bar.window_size < virtual else 0
    if not (window and size and virtual and size != virtual):
        return (-1, -1)
    extent = max(1, window / (virtual / size))
    start = int((size - extent) * (position / (virtual - window)) * 8)
    return (start, start + ceil(extent * 8))


def quiet_position(bar: ScrollBar, position: float) -> None:
    """Set ``bar``'s position without a redraw if its thumb stays put."""
    position = int(position * 8) / 8  # ScrollBar.validate_position's grain
    if position != bar.position and thumb(bar, position) == thumb(bar, bar.position):
        bar.set_reactive(ScrollBar.position, position)
