"""Manual pages (roff source, man and mdoc macros) -> plain text for a training corpus.

Not a formatter: source line breaks are kept (filling would put spaces into Chinese text),
paragraph macros become blank lines, font/size/motion escapes vanish, named characters become
their Unicode character, and definitions, conditionals and table layouts are dropped.
"""

from __future__ import annotations

import re

CHARS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "aq": "'", "dq": '"', "lq": "“",
    "rq": "”", "oq": "‘", "cq": "’", "co": "©", "rg": "®", "tm": "™", "mu": "×", "di": "÷",
    "+-": "±", "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "de": "°", "ga": "`",
    "aa": "´", "ti": "~", "ha": "^", "sl": "/", "rs": "\\", "ba": "|", "br": "│", "ul": "_",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "ps": "¶", "sc": "§",
    "Eu": "€", "Po": "£", "Ye": "¥", "ct": "¢", "fm": "′", "sq": "□", "**": "*", "pl": "+",
    "eq": "=", "lh": "☜", "rh": "☞", "or": "|", "R": "®", "Tm": "™", "ua": "↑", "da": "↓",
}
SIMPLE = {"e": "\\", "-": "-", ".": ".", "'": "'", "`": "`", " ": " ", "~": " ", "0": " ",
          "t": "\t", "(": "", "\n": ""}
PARAGRAPH = {"PP", "LP", "P", "Pp", "sp", "TP", "TQ", "IP", "HP", "Sp", "SH", "SS", "Sh", "Ss",
             "Lp", "Bl", "El", "Bd", "Ed", "EX", "EE"}
JOINED = {"BR", "BI", "IB", "IR", "RB", "RI"}
SPACED = {"B", "I", "SM", "SB", "UR", "MT", "OP", "SY", "Nm", "Nd", "Ar", "Pa", "Em", "Sy", "Dv",
          "Va", "Fn", "Ev", "Li", "Cm", "Ic", "Ad", "Er", "Fa", "Ft", "Fd", "Tn", "It", "Ql", "Dq",
          "Sq", "Pq", "Op", "Oo", "Oc", "Aq", "Dl", "D1", "Ux", "Bx", "At", "Ot", "Xo", "Ms",
          "No", "Qq", "Sx", "Lb", "Lk", "Mt", "Cd", "Vt", "An", "Ta"}
HEADINGS = {"SH", "SS", "Sh", "Ss"}
BLOCK_DEFINITIONS = {"de", "de1", "am", "am1", "ig"}
CONDITIONALS = {"if", "ie", "el", "while"}

_ESCAPE = re.compile(
    r"\\(?:"
    r"\[(?P<bracket>[^\]]*)\]"                 # \[name]
    r"|\((?P<paren>..)"                         # \(xx
    r"|\*(?:\[(?P<str_b>[^\]]*)\]|\((?P<str_p>..)|(?P<str_c>.))"  # \*[s] \*(xx \*x
    r"|[fFgmMnkYV](?:\[[^\]]*\]|\(..|[+-]?.)"   # font, colour, register: dropped
    r"|s(?:\[[^\]]*\]|[+-]?\(\d\d|[+-]?\d{1,2})"  # size
    r"|N'(?P<code>\d+)'"                        # \N'123'
    r"|[hvwlLoxDbHSZXAR](?P<delim>.).*?(?P=delim)"  # motions and other delimited escapes
    r"|\$\S"                                    # macro arguments
    r"|(?P<one>.)"
    r")", re.DOTALL)


def _named(name: str) -> str:
    if name.startswith("u") and len(name) >= 5:
        try:
            return "".join(chr(int(part, 16)) for part in name[1:].split("_"))
        except ValueError:
            return ""
    return CHARS.get(name, "")


def _replace_escape(match: re.Match) -> str:
    groups = match.groupdict()
    if groups["bracket"] is not None:
        return _named(groups["bracket"])
    if groups["paren"] is not None:
        return _named(groups["paren"])
    for key in ("str_b", "str_p", "str_c"):
        if groups[key] is not None:
            return CHARS.get(groups[key], "")
    if groups["code"] is not None:
        return chr(int(groups["code"]))
    one = groups["one"]
    if one is None:
        return ""
    return SIMPLE.get(one, "" if one in "&|^c%/,:){}pdurz" else one)


def inline_text(line: str) -> str:
    """Text of one roff line with escapes resolved; a ``\\"`` comment ends the line."""
    line = line.replace("\\\\", "\x00")
    comment = line.find('\\"')
    if comment >= 0:
        line = line[:comment]
    return _ESCAPE.sub(_replace_escape, line).replace("\x00", "\\").rstrip()


def _arguments(rest: str) -> list[str]:
    return [q.replace('""', '"') if q else w
            for q, w in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', rest)]


def roff_to_text(source: str) -> str:
    out: list[str] = []
    skip_until: str | None = None  # ".." ends a definition, "\\}" a conditional block
    table_layout = False
    for line in source.splitlines():
        if skip_until is not None:
            if (line.startswith("..") if skip_until == ".." else skip_until in line):
                skip_until = None
            continue
        if table_layout:  # the layout lines of a tbl table end with a "."
            table_layout = not line.rstrip().endswith(".")
            continue
        if not line.startswith((".", "'")):
            if line.strip() == "" and out and out[-1] == "":
                continue
            out.append(inline_text(line))
            continue
        request = line[1:].lstrip()
        name, _, rest = request.partition(" ")
        if name in BLOCK_DEFINITIONS:
            skip_until = ".."
        elif name in CONDITIONALS:
            if "\\{" in line and "\\}" not in line:
                skip_until = "\\}"
        elif name == "TS":
            table_layout = True
        elif name in PARAGRAPH or name in SPACED or name in JOINED or name == "Xr":
            if name in PARAGRAPH and out and out[-1] != "":
                out.append("")
            words = [inline_text(a) for a in _arguments(rest)]
            if name in PARAGRAPH and name not in HEADINGS:
                words = words[:1] if name == "IP" else []  # an IP tag; other arguments are sizes
            if name == "Xr" and len(words) >= 2:
                words = [f"{words[0]}({words[1]})"] + words[2:]
            text = ("" if name in JOINED else " ").join(words)
            if text:
                out.append(text)
                if name in HEADINGS:
                    out.append("")
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
