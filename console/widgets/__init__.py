"""Widgets of the console: they show what they are given and post messages;
none of them knows the engine or the app."""
