"""roff (man/mdoc) source -> plain text for the demo corpus."""

from megatron_cpt.data.roff_text import inline_text, roff_to_text


def test_inline_escapes():
    assert inline_text(r"\fBbold\fR and \fIitalic\fP \- dash") == "bold and italic - dash"
    assert inline_text(r"\(lqquoted\(rq \(em \[u4E2D]\[u6587] \e \&.") == "“quoted” — 中文 \\ ."
    assert inline_text(r"size \s-1SMALL\s0 \h'2n'moved\v'-1'") == "size SMALL moved"
    assert inline_text(r"C string \\n stays") == r"C string \n stays"
    assert inline_text(r'text \" a comment') == "text"


def test_man_macros():
    source = "\n".join([
        r'.\" a comment',
        ".de XX",
        "defined macro body is dropped",
        "..",
        '.TH "AB" 1 "2003" "x"',
        ".SH NAME",
        r"ab \- 服务器性能测试工具",
        '.SH "总览 SYNOPSIS"',
        ".B ab",
        ".BR ls (1),",
        ".if n \\{\\",
        "conditional block dropped",
        ".\\}",
        ".HP \\w'\\fBab\\fR\\ 'u",
        ".PP",
        "是一个测试工具",
        ".IP \\(bu 4",
        "item",
        ".TS",
        "tab(;);",
        "l l.",
        "cell;cell",
        ".TE",
    ])
    assert roff_to_text(source) == "\n".join([
        "NAME", "", "ab - 服务器性能测试工具", "", "总览 SYNOPSIS", "", "ab", "ls(1),", "",
        "是一个测试工具", "", "•", "item", "cell;cell"])


def test_mdoc_macros():
    source = ".Sh NAME\n.Nm grep\n.Nd search\n.Sh SEE ALSO\n.Xr sed 1"
    assert roff_to_text(source) == "NAME\n\ngrep\nsearch\n\nSEE ALSO\n\nsed(1)"
