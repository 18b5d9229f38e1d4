"""The console's screens: one module per screen, layout in themes/shoal.tcss."""
