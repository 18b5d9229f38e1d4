"""Where a template placeholder is safe: quoting is the engine's job.

A ``shell`` template's values are substituted with ``shlex.quote``, which
makes each one a single word *where the shell reads words*. Inside quotes
that no longer holds: ``"{item}"`` with the item ``$(id)`` becomes
``"'$(id)'"``, and the shell runs ``id``. The same goes for a placeholder
after a backslash or a ``$``, or touching a quote, or in a comment, a
here-document or backquotes, where the shell reads the value by other rules.
(Arithmetic, ``$(( {item} % 2 ))``, is allowed: a quoted value there is a
number, a name, or a syntax error, never a command.) ``check_template`` refuses every such placement, so the class of
bug cannot be written, and the message says the fix.

A ``command`` list runs without a shell, so its values are passed verbatim;
but a list that runs a shell with ``-c`` (``["sh", "-c", "..."]``) has a
shell script as the argument after ``-c``: ``shell_script_index`` finds it,
and it is checked and quoted like a ``shell`` template. In other list
elements a placeholder touching or inside quotes is refused too: the quotes
would reach the program literally, which is never what was meant.

Not covered, and said in the job file reference: a command that hands a value
to a second interpreter (``eval``, ``ssh host cmd``, ``su -c``, ``python -c``)
parses it again, unquoted; pass values to those as arguments or files.
"""

from __future__ import annotations

import os
import re

# Programs whose "-c" argument is a shell script.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "posh", "yash"})
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_BRACES = re.compile(r"\{\{|\}\}")
_FIX = "write the placeholder bare, as its own word: Shoal quotes every substituted value itself"


class UnsafePlaceholder(ValueError):
    """A placeholder where Shoal's quoting does not protect it."""


def shell_script_index(argv: tuple[str, ...] | list[str]) -> int | None:
    """The index of the script in ``[shell, -opts..c.., script, ...]``, or None."""
    if not argv or os.path.basename(argv[0]) not in SHELLS:
        return None
    for index in range(1, len(argv)):
        arg = argv[index]
        if not arg.startswith("-") or arg in ("-", "--"):
            return None  # a script file or the end of the options: no -c
        if not arg.startswith("--") and "c" in arg[1:]:
            return index + 1 if index + 1 < len(argv) else None
    return None


def check_template(template: str, *, shell: bool) -> None:
    """Raise ``UnsafePlaceholder`` if a placeholder in ``template`` sits where
    quoting does not protect it. ``shell``: the template is shell script."""
    if shell:
        _Scanner(template).scan()
        return
    # No shell reads it: a lone apostrophe ("don't") is text, so only a
    # placeholder touching a quote or between a pair of them is refused.
    plain = _BRACES.sub("__", template)
    for match in _PLACEHOLDER.finditer(plain):
        before, after = plain[: match.start()], plain[match.end() :]
        if before[-1:] in ("'", '"') or after[:1] in ("'", '"'):
            raise UnsafePlaceholder(f"placeholder {{{match.group(1)}}} touches a quote; {_FIX}")
        for quote in ("'", '"'):
            if before.count(quote) % 2 and quote in after:
                raise UnsafePlaceholder(f"placeholder {{{match.group(1)}}} is inside quotes; {_FIX}")


class _Scanner:
    """A small lexer of POSIX shell quoting, just enough to know the context
    of each placeholder. It errs on the side of refusing."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.quote = ""  # "'", '"' or "$'" while inside one
        self.backquote = False
        self.comment = False
        self.heredocs: list[tuple[str, bool]] = []  # (delimiter, strip tabs) waiting for the next line

    def fail(self, name: str, where: str) -> None:
        raise UnsafePlaceholder(f"placeholder {{{name}}} {where}; {_FIX}")

    def scan(self) -> None:
        text, i, prev = self.text, 0, ""
        while i < len(text):
            if text.startswith(("{{", "}}"), i):
                prev, i = text[i], i + 2
                continue
            c = text[i]
            if c == "{":
                match = _PLACEHOLDER.match(text, i)
                if match is not None:
                    self.placeholder(match.group(1), prev, text[match.end() : match.end() + 1])
                    prev, i = "x", match.end()
                    continue
            i = self.step(i, c, prev)
            prev = c

    def placeholder(self, name: str, prev: str, after: str) -> None:
        if self.quote:
            self.fail(name, "is inside quotes")
        if prev in ("'", '"') or after in ("'", '"'):
            self.fail(name, "touches a quote")
        if prev == "\\":
            self.fail(name, "follows a backslash, which would escape the quote Shoal adds")
        if prev == "$":
            self.fail(name, "follows a '$'")
        if self.comment:
            self.fail(name, "is in a comment, where a newline in the value would end the comment")
        if self.backquote:
            self.fail(name, "is inside backquotes (use $(...) instead)")

    def step(self, i: int, c: str, prev: str) -> int:
        """Consume the character at ``i`` (and any it escapes); return the next index."""
        text = self.text
        if self.quote == "'":
            if c == "'":
                self.quote = ""
            return i + 1
        if self.quote in ('"', "$'"):
            if c == "\\":
                return i + 2
            if c == self.quote[-1]:
                self.quote = ""
            elif c == "`" and self.quote == '"':
                self.backquote = not self.backquote
            return i + 1
        if self.comment:
            if c == "\n":
                self.comment = False
                return self.heredoc_bodies(i + 1)
            return i + 1
        if c == "\\":
            # An escaped placeholder is not skipped: placeholder() refuses it.
            return i + 1 if _PLACEHOLDER.match(text, i + 1) else i + 2
        if c == "'":
            self.quote = "$'" if prev == "$" else "'"
        elif c == '"':
            self.quote = '"'
        elif c == "`":
            self.backquote = not self.backquote
        elif c == "#" and (prev == "" or prev.isspace() or prev in ";&|()<>"):
            self.comment = True
        elif text.startswith("<<", i) and not text.startswith("<<<", i):
            return self.heredoc_operator(i + 2)
        elif c == "\n":
            return self.heredoc_bodies(i + 1)
        return i + 1

    def heredoc_operator(self, i: int) -> int:
        text = self.text
        strip = text.startswith("-", i)
        i += strip
        while i < len(text) and text[i] in " \t":
            i += 1
        start = i
        while i < len(text) and not text[i].isspace() and text[i] not in ";&|<>()":
            i += 1
        delimiter = _BRACES.sub(lambda m: m.group(0)[0], text[start:i])
        self.heredocs.append((delimiter.replace("'", "").replace('"', "").replace("\\", ""), strip))
        return i

    def heredoc_bodies(self, i: int) -> int:
        """Skip the bodies of the here-documents opened on the line just ended,
        refusing a placeholder in any of them."""
        text = self.text
        while self.heredocs:
            delimiter, strip = self.heredocs.pop(0)
            while i < len(text):
                end = text.find("\n", i)
                end = len(text) if end < 0 else end
                line = text[i:end]
                i = end + 1
                if (line.lstrip("\t") if strip else line) == delimiter:
                    break
                for match in _PLACEHOLDER.finditer(_BRACES.sub("", line)):
                    self.fail(match.group(1), "is in a here-document, where the shell expands $(...) in it")
        return i
